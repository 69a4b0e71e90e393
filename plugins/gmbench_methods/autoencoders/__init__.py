"""autoencoders method plugins."""
