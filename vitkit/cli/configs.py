"""The shipped run configs (``vitkit/configs/*.yaml``) and how a config argument is found; imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # package data: vitkit/configs/
CONFIG_SUFFIXES = (".yaml", ".yml")


def shipped_configs() -> list[str]:
    """The names of the shipped configs (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(config: str | Path) -> Path:
    """The config file a command-line argument names: an existing YAML path, else a shipped config's name with or
    without ``.yaml`` (``detr_shapes``).

    Raises:
        ConfigError: no such file and no shipped config of that name; the message lists the shipped names."""
    path = Path(config)
    if path.is_file():
        return path
    if path.name == str(config):  # a bare name, no folder: a shipped config?
        stem = path.stem if path.suffix in CONFIG_SUFFIXES else path.name
        shipped = SHIPPED_CONFIGS / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
    from vitkit.training.guards import ConfigError  # heavy: torch; imported on the error path so --help stays fast

    what = "not a file" if path.exists() else "no such file"
    raise ConfigError(f"config {config}: {what}, and no shipped config has that name. Fix: give the path of a YAML "
                      f"config, or one of the shipped names: {', '.join(shipped_configs())}")


def read_config(path: str | Path) -> dict[str, Any]:
    """The top level of a YAML run config, as plain data.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or does not hold a mapping of keys.
    """
    from vitkit.training.guards import ConfigError  # heavy: torch; imported when a config is read, not for --help

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"config {path}: cannot be read ({err.strerror or err}). Fix: give a readable YAML "
                          "file") from err
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"config {path}: not valid YAML ({detail}). Fix: correct the file's syntax") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: holds {type(data).__name__}, not a mapping of keys (trainer:, model:, "
                          "data: ...). Fix: start from a shipped config (vitkit/configs/)")
    return data
