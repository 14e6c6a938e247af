"""modelfs: model-hub repositories as a lazily fetched, read-only filesystem."""

__version__ = "0.1.0"
