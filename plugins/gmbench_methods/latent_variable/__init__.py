"""latent variable methods."""
