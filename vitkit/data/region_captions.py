"""Region captions: the optional ``caption`` of each annotation of a COCO-layout instances file (issue 17).

A region-captioning set is a COCO instances file whose annotations may carry a ``caption`` string, the phrase that
describes the object in the box ("a small red triangle", "man riding a brown horse"). The field is optional per
annotation: an annotation without it still trains the detector, only not the phrase decoder. The synthetic shapes set
(:mod:`vitkit.data.shapes`) writes one on every annotation; :mod:`vitkit.data.visual_genome` converts Visual Genome's
region descriptions into this layout.

What :func:`read_region_captions` accepts, what it rejects (a ``ValueError`` that names the file, the annotation id
with its index, and the field, and says how to fix it; the first problem is reported with how many annotations
share it, as :mod:`vitkit.data.annotations` does):

=================================================  ===============================================================
case                                               rule
=================================================  ===============================================================
no ``caption`` key                                 accepted: the annotation's caption is ``None``
a string of 1..``max_chars`` characters with       accepted as given (not stripped or lower-cased: the tokenizer
something besides whitespace                       decides that)
``null``, a number, a list, ...                    error: leave the key out instead of writing ``null``
empty or whitespace only                           error: an empty target would teach the decoder to stop at once
longer than ``max_chars`` (default 500)            error: a paragraph, not a region's phrase (often a field mix-up)
an annotation without an integer ``id``, or two    error: captions are looked up by annotation id
annotations with one id
=================================================  ===============================================================

Everything else in the file (boxes, categories, images) is checked by
:func:`vitkit.data.annotations.check_instances`, which ignores the ``caption`` key.
"""

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

    Args:
        data: the parsed file, with an ``annotations`` list (as :func:`~vitkit.data.annotations.read_coco_json`
            returns it).
        path: the file, for the messages.
        max_chars: longest accepted caption, characters.

    Returns:
        Annotation id -> caption, or None for an annotation without a ``caption`` key, in file order.

    Raises:
        ValueError: naming the file, the annotation (id and index) and the field of the first problem.
    """
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

    Args:
        path: the instances file.
        hint: appended to file-level errors (the expected layout).
        max_chars: longest accepted caption, characters.

    Returns:
        Annotation id -> caption (the string as the file gives it), or None for an annotation without one; every
        annotation of the file is a key.

    Raises:
        ValueError: the file is not JSON or lacks its ``images`` / ``annotations`` / ``categories`` lists, or an
            annotation has no integer ``id``, a repeated one, or a malformed ``caption`` (see the module docstring);
            the message names the file, the annotation id and its index, and the field.
    """
    data = read_coco_json(path, "instances", ("images", "annotations", "categories"), hint)
    return region_captions(data, path, max_chars)
