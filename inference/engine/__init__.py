"""The runtime engine: what workers run on a slide, plain PyTorch/NumPy with no Django.

Its torch-free modules (vocabulary, slide_io, tissue, hpf) serve web processes too; the
development tools (synthetic slides, training, evaluation) are in ``inference.tools``.
"""
