"""Homestack tools: the library behind the `tools` command."""

__version__ = "0.1.0"
