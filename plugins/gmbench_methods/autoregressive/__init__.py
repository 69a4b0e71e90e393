"""autoregressive method plugins."""
