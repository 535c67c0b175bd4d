"""Development tools: synthetic slides, training and evaluation; workers never import it.

Plain NumPy/PyTorch beside the runtime engine (``inference.engine``), which it uses and
which never uses it; like the engine it knows nothing of Django.
"""
