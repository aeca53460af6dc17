"""UNITER (UNiversal Image-TExt Representation learning) in JAX/Flax."""
