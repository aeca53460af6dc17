"""Region features from images: the bottom-up-attention detector in JAX.

The Visual Genome Faster R-CNN (ResNet-101 C4, RPN, RoIPool, res5 box head
with attributes) and the steps around it. Nothing in `uniter_jax.data` or the
model imports this package; it writes the region stores they read.
"""
