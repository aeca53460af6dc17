"""Command-line tools: `python -m uniter_jax.tools.<name> --help`."""
