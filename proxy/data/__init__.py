"""Data files shipped inside the package: the price list (more to come), read with importlib.resources."""
