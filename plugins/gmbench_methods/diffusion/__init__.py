"""diffusion methods."""
