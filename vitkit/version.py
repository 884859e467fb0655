"""The package version, below every other module (export metadata and checkpoints record it)."""

__version__ = "0.1.0"
