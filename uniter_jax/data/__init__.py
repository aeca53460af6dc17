"""Region-feature and text stores, converters from public formats, synthetic data.

Data code never imports flax; the train loop is where data and model meet.
"""
