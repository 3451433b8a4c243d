"""noroshi: a streaming-first AI gateway and agent server."""

__version__ = "0.1.0"

__all__ = ["__version__"]
