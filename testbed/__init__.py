"""The bundled benchmark's testbed, installed as ``mmxai.testbed``: the scene generator
(:mod:`~mmxai.testbed.scenes`), the shipped held-out split (``data/``), the trained model with
its card (``weights/``) and the recipe that trained it (:mod:`~mmxai.testbed.train`). The
dataset reader that serves the split to ``mmxai compare`` is ``mmxai.datasets.synthetic``.
"""
