"""DiT and DiT3D in JAX/Flax."""
