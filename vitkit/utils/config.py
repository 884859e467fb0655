"""Objects built from ``{"class_path": ..., "init_args": {...}}`` configs, the way LightningCLI builds them."""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser


def instantiate(config: dict[str, Any], base: type) -> Any:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` dict (nested ones too).

    A config read from a file must be checked first (:func:`vitkit.utils.checkpoints.check_stored_config`):
    jsonargparse imports whatever the class paths name.

    Args:
        config: the class path and init args.
        base: the class the object must be an instance of.

    Returns:
        The built object.
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    cfg = parser.parse_object({"obj": config})
    return parser.instantiate_classes(cfg).obj
