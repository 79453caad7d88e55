"""The package version, in a module of its own so the record layer can name it without
importing the public API."""

__version__ = "0.1.0"
