"""Conversion from reference implementations' models and checkpoints."""
