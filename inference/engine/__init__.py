"""The runtime engine: what workers run on a slide, plain PyTorch/NumPy with no Django.

Its torch-free modules (vocabulary, tissue, hpf) serve web processes too. Slides are read
with the ``slides`` package (no Django either); the development tools (synthetic slides,
training, evaluation) are in ``inference.tools``.
"""
