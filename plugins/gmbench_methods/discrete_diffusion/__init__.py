"""discrete diffusion methods."""
