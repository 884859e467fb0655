"""Region captions: the optional ``caption`` of each annotation of a COCO-layout instances file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitkit.data.annotations import Problems, check_fields, check_unique, entry_name, read_coco_json

MAX_CAPTION_CHARS = 500  # Visual Genome's region phrases are 5 words on average; COCO's captions ~50 characters
_FIX = ("give the region's description as a non-empty string of at most {n} characters, or leave the 'caption' key "
        "out for an annotation that trains the detector only")


def _caption_problem(value: Any, max_chars: int) -> tuple[str, str] | None:
    """(kind, what is wrong) for a present ``caption`` value, or None when it is usable."""
    if not isinstance(value, str):
        what = "null" if value is None else f"a JSON {type(value).__name__}"
        return "not a string", f"is {what} ({value!r}), not a string"
    if not value.strip():
        return "blank", f"is {'empty' if not value else 'whitespace only'} ({value!r})"
    if len(value) > max_chars:
        return "too long", f"has {len(value)} characters, more than {max_chars} ({value[:40]!r}...)"
    return None


def region_captions(data: dict[str, Any], path: str | os.PathLike,
                    max_chars: int = MAX_CAPTION_CHARS) -> dict[int, str | None]:
    """The region captions of an already parsed instances file (see :func:`read_region_captions`).

    Returns:
        Annotation id -> caption, or None for an annotation without a ``caption`` key, in file order.

    Raises:
        ValueError: naming the file, the annotation (id and index) and the field of the first problem."""
    errors = Problems(Path(path))
    anns = data["annotations"]
    usable = [a for k, a in enumerate(anns) if check_fields(errors, "annotations", k, a, {"id": "int"})]
    errors.raise_first()
    check_unique(errors, "annotations", usable, reason="; region captions are looked up by annotation id")
    errors.raise_first()
    captions: dict[int, str | None] = {}
    for k, ann in enumerate(anns):
        value = ann.get("caption")
        problem = _caption_problem(value, max_chars) if "caption" in ann else None
        if problem:
            errors.add(f"annotations whose 'caption' is {problem[0]}", ann["id"], f"{entry_name('annotations', k, ann)}"
                       f": field 'caption' {problem[1]}; {_FIX.format(n=max_chars)}")
            continue
        captions[ann["id"]] = value
    errors.raise_first()
    return captions


def read_region_captions(path: str | os.PathLike, hint: str = "",
                         max_chars: int = MAX_CAPTION_CHARS) -> dict[int, str | None]:
    """Read the per-annotation captions of a COCO instances file (``instances_*.json``).

    A ``caption`` must be a string of 1..``max_chars`` characters, not only whitespace (kept as given); no key gives
    None. ``null``, other types, blank or too long captions are errors, as are missing or repeated integer ids.

    Args:
        hint: appended to file-level errors (the expected layout).
        max_chars: longest accepted caption, characters.

    Returns:
        Annotation id -> caption, or None for an annotation without one; every annotation of the file is a key.

    Raises:
        ValueError: the file is not JSON or lacks its ``images`` / ``annotations`` / ``categories`` lists, or a
            caption or id breaks the rules above; the message names the file, the annotation id, its index and
            the field."""
    data = read_coco_json(path, "instances", ("images", "annotations", "categories"), hint)
    return region_captions(data, path, max_chars)
