"""Templated captions of a generated shapes image (:mod:`vitkit.data.shapes`): counts, colours, kinds, sizes and
positions of its objects, five varied sentences per image; and the phrase of each object (its instance annotation's
``caption``), worded as the image captions describe that object."""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count(n: int, words: str) -> str:
    """'a red square' / 'two red squares' (plural by appending 's')."""
    if n == 1:
        return f"{_article(words)} {words}"
    return f"{_NUMBERS[n] if n < len(_NUMBERS) else n} {words}s"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _position(box: list[float], height: int, width: int) -> str:
    """Where the box centre lies on a 3x3 grid: 'at the top left', 'on the right', 'in the center', ..."""
    cx, cy = (box[0] + box[2] / 2) / width, (box[1] + box[3] / 2) / height
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    if row and col:
        return f"at the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the center"


def _size_word(area: float, height: int, width: int) -> str:
    frac = area / (height * width)
    return "small " if frac < 0.02 else "large " if frac > 0.12 else ""


def object_phrase(kind: str, color: str, area: float, height: int, width: int, crowd: bool = False) -> str:
    """The phrase of one annotated object, worded as the image captions word it.

    Args:
        kind: shape name ("square", "circle", "triangle", "star").
        area: visible pixel count of the object, px.
        height, width: image size, px.
        crowd: the object is an ``iscrowd=1`` cluster (its area is not used then).

    Returns:
        "a small red triangle", "an orange star" (medium objects get no size word), "a large blue circle", or for a
        crowd "a cluster of tiny red squares"."""
    if crowd:
        return f"a cluster of tiny {color} {kind}s"
    return _count(1, f"{_size_word(area, height, width)}{color} {kind}")


def shape_captions(rng: np.random.Generator, objects: list[dict[str, Any]], crowd: dict[str, Any] | None, bg: str,
              height: int, width: int) -> list[str]:
    """Five varied templated captions. ``objects``: dicts with kind, color, bbox, area (largest first)."""
    if not objects:
        pool = [
            f"an empty textured {bg} background",
            f"a plain {bg} background with no shapes",
            f"nothing but a noisy {bg} texture",
            f"no shapes on {_article(bg)} {bg} background",
            "an empty image with a textured background",
            f"a blank {bg} surface",
        ]
        return [pool[int(i)] for i in rng.choice(len(pool), 5, replace=False)]

    n = len(objects)
    by_color: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for o in objects:
        by_color[f"{o['color']} {o['kind']}"] = by_color.get(f"{o['color']} {o['kind']}", 0) + 1
        by_kind[o["kind"]] = by_kind.get(o["kind"], 0) + 1
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])  # stable: ties keep largest-first order
    crowd_phrase = object_phrase(crowd["kind"], crowd["color"], 0.0, height, width, crowd=True) if crowd else ""
    crowd_tail = f" and {crowd_phrase}" if crowd else ""
    big = objects[0]
    described = [object_phrase(o["kind"], o["color"], o["area"], height, width) for o in objects]
    colors = sorted({o["color"] for o in objects})
    big_size = _size_word(big["area"], height, width).strip() or "medium"
    big_color_kind = f"{big['color']} {big['kind']}"

    pool = [
        f"{_join([_count(c, w) for w, c in by_color.items()])}{crowd_tail} on {_article(bg)} {bg} background",
        _join([_count(c, w) for w, c in kinds]),
        f"{_count(1, f'{big_size} {big_color_kind}')} {_position(big['bbox'], height, width)}"
        + (f" and {_NUMBERS[n - 1]} other shape{'s' if n > 2 else ''}" if n > 1 else ""),
        f"a single {big['color']} {big['kind']} on a textured {bg} background" if n == 1
        else f"{_NUMBERS[n]} shapes on a textured {bg} background",
        _join([f"{_count(1, o['color'] + ' ' + o['kind'])} {_position(o['bbox'], height, width)}"
               for o in objects[:3]]),
        f"{('an image of', 'a picture of', 'a drawing of')[int(rng.integers(3))]} {_join(described)}{crowd_tail}",
        f"{_join(colors)} shapes against {_article(bg)} {bg} backdrop" if len(colors) > 1
        else f"{_NUMBERS[n]} {big['color']} shapes against {_article(bg)} {bg} backdrop" if n > 1
        else f"just one {big['color']} {big['kind']} against {_article(bg)} {bg} backdrop",
    ]
    return [pool[int(i)] for i in rng.choice(len(pool), 5, replace=False)]
