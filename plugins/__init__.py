"""Built-in model adapters (and metric plugins), installed as ``mmxai.plugins``."""
