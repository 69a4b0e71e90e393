"""flows method plugins."""
