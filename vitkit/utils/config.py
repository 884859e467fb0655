"""Objects built from ``{"class_path": ..., "init_args": {...}}`` configs, the way LightningCLI builds them."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser


def instantiate(config: dict[str, Any], base: type) -> Any:
    """Build an object (an instance of ``base``) from a ``{"class_path": ..., "init_args": {...}}`` dict (nested
    ones too). Check a config read from a file first (:func:`vitkit.utils.checkpoints.check_stored_config`)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    cfg = parser.parse_object({"obj": config})
    return parser.instantiate_classes(cfg).obj
