"""adversarial method plugins."""
