"""Reading the JSON files COCO evaluation takes, with errors that name the file."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str, what: str) -> Any:
    """Parse a JSON file; a missing file or bad JSON raises an error naming ``what`` and the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {path} ({e})") from e
