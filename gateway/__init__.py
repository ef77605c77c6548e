"""gatewatch gateway: serves versioned models over the Open Inference Protocol."""

__version__ = "0.1.0"

__all__ = ["__version__"]
