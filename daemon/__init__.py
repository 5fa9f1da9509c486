"""Firehouse: page early, at the full potential severity, to the right people."""

__version__ = "0.1.0"
