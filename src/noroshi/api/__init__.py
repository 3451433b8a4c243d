"""Handlers, one module per surface."""
