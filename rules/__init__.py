"""graphfix's built-in rule library: one rule per module, named after the module."""
