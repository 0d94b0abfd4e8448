"""Plugins shipped with mmxai, installed as ``mmxai.plugins``: model adapters in
``models/``, metrics in ``metrics/``."""
