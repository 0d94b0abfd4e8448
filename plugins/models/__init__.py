"""Model-family adapters: one module per family, registered as entry points."""
