"""largebatch: large mini-batch training in PyTorch, and diagnostics of the minima it reaches."""

__version__ = "0.1.0"
