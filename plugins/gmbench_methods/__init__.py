"""gmbench's built-in method plugins, one module per method, grouped by family.

Each module is registered through the ``gmbench`` entry-point group in
pyproject.toml, exactly as a third-party plugin package would be. Modules stay
cheap to import: heavy work happens when a method is built.
"""
