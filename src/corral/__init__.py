"""Corral: run a Python ASGI web API in production with one command."""

__version__ = "0.1.0"
