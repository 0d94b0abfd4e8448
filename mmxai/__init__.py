"""mmxai: explain what a multimodal LLM looked at for each generated token."""

__version__ = "0.1.0"
