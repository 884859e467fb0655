"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (SPICE is never run).

CIDEr is pycocoevalcap's CIDEr-D (clipped n-gram counts, Gaussian length penalty with sigma 6, x10). Without Java,
tokenisation uses :func:`python_ptb_tokenize` and METEOR is left out (one warning per process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from vitkit.eval.ptb_tokenize import java_available, tokenize_captions

logger = logging.getLogger(__name__)

METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

JAVA_HINT = ("METEOR and the reference PTB tokenizer need a Java runtime: install a JRE 8 or newer "
             "(e.g. `apt-get install default-jre-headless`, or `conda install openjdk`) so that `java` is on PATH")
_NOTIFIED: set[str] = set()  # one-per-process messages already given (only de-duplicates messages)


def warn_once(key: str, message: str) -> None:
    """Warn with ``message`` the first time ``key`` is seen in this process (the caller's caller is blamed)."""
    if key not in _NOTIFIED:
        _NOTIFIED.add(key)
        warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------------- scoring


def _type_hint(image_id: Any, known: Mapping[Any, Any]) -> str:
    """A hint when ``image_id`` is missing from ``known`` only because it is a str where ids are ints or back."""
    if isinstance(image_id, int):
        other: Any = str(image_id)
    elif isinstance(image_id, str) and image_id.isdigit():
        other = int(image_id)
    else:
        return ""
    return f" ({other!r} is there: image ids must match in type too)" if other in known else ""


def _validate(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, str]) -> None:
    if not isinstance(gts, Mapping) or not isinstance(res, Mapping):
        raise TypeError("gts and res must be dicts: gts {image_id: [reference, ...]}, res {image_id: caption}")
    if not res:
        raise ValueError("res is empty: there is no caption to evaluate")
    for image_id, refs in gts.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"gts[{image_id!r}] must be a list of reference captions, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"gts[{image_id!r}] has no reference captions; every image needs at least one")
        if not all(isinstance(r, str) for r in refs):
            raise TypeError(f"gts[{image_id!r}] must hold only strings, got {[type(r).__name__ for r in refs]}")
    for image_id, caption in res.items():
        if image_id not in gts:
            raise ValueError(f"res has image id {image_id!r}, which is not in gts{_type_hint(image_id, gts)}")
        if not isinstance(caption, str):
            raise TypeError(f"res[{image_id!r}] must be one caption string, got {type(caption).__name__}")


class CaptionScorer:
    """Reusable caption scorer keeping one METEOR Java process across calls; a context manager (or :meth:`close`).

    Args:
        java: use Java for METEOR and the PTB tokenizer; None = whether ``java`` is on PATH.
    """

    def __init__(self, java: bool | None = None) -> None:
        self.java = java_available() if java is None else bool(java)
        self._meteor: Meteor | None = None
        if not self.java:
            reason = "Java was not found on PATH" if java is None else "Java was disabled (java=False)"
            warn_once("no-java", f"METEOR skipped: {reason}. {JAVA_HINT}. Captions are tokenised with vitkit's "
                                  "Python approximation of the PTB tokenizer meanwhile.")
        else:
            try:  # starts loading now, so tokenisation and the other metrics overlap with the JVM start-up
                self._meteor = Meteor()
            except OSError as exc:
                warnings.warn(f"METEOR skipped: could not start Java ({exc}). {JAVA_HINT}.", stacklevel=2)
        if "spice" not in _NOTIFIED:
            _NOTIFIED.add("spice")
            logger.info("SPICE is not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP at first use, "
                        "and vitkit evaluates offline.")

    def __call__(self, gts: Mapping[int | str, Sequence[str]], res: Mapping[int | str, str]) -> dict[str, float]:
        """Score candidate captions against references; see :func:`caption_metrics`."""
        _validate(gts, res)
        ids = list(res)  # evaluated images: those with a candidate
        counts = [len(gts[i]) for i in ids]
        tokens = tokenize_captions([r for i in ids for r in gts[i]] + [res[i] for i in ids], java=self.java)
        tok_gts: dict[Any, list[str]] = {}
        start = 0
        for image_id, n in zip(ids, counts, strict=True):
            tok_gts[image_id] = tokens[start:start + n]
            start += n
        tok_res = {image_id: [tokens[start + k]] for k, image_id in enumerate(ids)}
        if not any(ref for refs in tok_gts.values() for ref in refs):
            raise ValueError("every reference caption is empty after tokenisation: nothing to compare against")

        bleu, _ = Bleu(4).compute_score(tok_gts, tok_res, verbose=0)
        rouge, _ = Rouge().compute_score(tok_gts, tok_res)
        cider, _ = Cider().compute_score(tok_gts, tok_res)
        meteor = self._meteor_score(tok_gts, tok_res)
        scores = {f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
        if meteor is not None:
            scores["METEOR"] = meteor
        scores["ROUGE_L"] = float(rouge)
        scores["CIDEr"] = float(cider)
        return scores

    def _meteor_score(self, gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float | None:
        meteor = self._meteor
        if meteor is None:
            return None
        try:
            score, _ = meteor.compute_score(gts, res)
            return float(score)
        except (OSError, ValueError) as exc:  # the JVM died or printed something other than a score
            if meteor.lock.locked():  # pycocoevalcap does not release it on errors; its __del__ would hang
                meteor.lock.release()
            self.close()
            stderr = ""
            with contextlib.suppress(OSError, ValueError):
                stderr = meteor.meteor_p.stderr.read().decode(errors="replace").strip()[-600:]
            warnings.warn(f"METEOR skipped: the METEOR Java process failed ({type(exc).__name__}: {exc}); "
                          f"its stderr ends: {stderr!r}. It runs `java -jar -Xmx2G meteor-1.5.jar`: check "
                          "`java -version` (8 or newer) and that 2 GB of heap can be reserved.", stacklevel=3)
            return None

    def close(self) -> None:
        """Stop the METEOR Java process (later calls leave METEOR out)."""
        meteor, self._meteor = self._meteor, None
        if meteor is None:
            return
        with meteor.lock:
            with contextlib.suppress(OSError):
                meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def caption_metrics(gts: Mapping[int | str, Sequence[str]], res: Mapping[int | str, str],
                    java: bool | None = None) -> dict[str, float]:
    """COCO caption metrics of candidate captions against reference captions.

    The evaluated images are the keys of ``res``; ``gts`` may hold more. CIDEr's IDF comes from the evaluated
    images' references. Empty captions are allowed.

    Args:
        gts: image id -> reference captions (raw text, at least one per image).
        res: image id -> one candidate caption (raw text); every id must be in ``gts``.
        java: use Java for METEOR and PTB tokenisation; None = whether ``java`` is on PATH.

    Returns:
        ``Bleu_1`` .. ``Bleu_4``, ``METEOR`` (only with Java), ``ROUGE_L``, ``CIDEr`` as floats (BLEU, METEOR
        and ROUGE-L in [0, 1]; CIDEr in [0, 10]).

    Raises:
        ValueError: ``res`` is empty, names an image id missing from ``gts``, or an image has no references.
        TypeError: a caption is not a string, or references are not a list.
    """
    _validate(gts, res)
    with CaptionScorer(java) as scorer:
        return scorer(gts, res)


# --------------------------------------------------------------------------------------------- files


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from exc


def _load_references(path: Path) -> dict[Any, list[str]]:
    data = _read_json(path, "caption annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} has no 'annotations' list; expected the COCO captions layout "
                         "(captions_val2017.json): {'images': [...], 'annotations': [{'image_id', 'caption'}, ...]}")
    gts: dict[Any, list[str]] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann or "bbox" in ann:
            keys = sorted(ann) if isinstance(ann, dict) else type(ann).__name__
            raise ValueError(f"{path}: annotation {k} needs 'image_id' and 'caption' (and no 'bbox'), has {keys} "
                             "(is this an instances_*.json rather than a captions_*.json file?)")
        if not isinstance(ann["caption"], str):
            raise ValueError(f"{path}: annotation {k} (image {ann['image_id']!r}) has a non-string caption")
        gts.setdefault(ann["image_id"], []).append(ann["caption"])
    return gts


def _load_candidates(path: Path) -> dict[Any, str]:
    data = _read_json(path, "caption results file")
    if not isinstance(data, list):
        raise ValueError(f"{path} must be a JSON list of {{'image_id': int, 'caption': str}} objects "
                         f"(the COCO caption results format), got a {type(data).__name__}")
    if not data:
        raise ValueError(f"{path} holds no results: there is no caption to evaluate")
    res: dict[Any, str] = {}
    for k, item in enumerate(data):
        if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise ValueError(f"{path}: result {k} needs 'image_id' and 'caption', has {keys}")
        image_id, caption = item["image_id"], item["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"{path}: result {k} (image {image_id!r}) has a non-string caption: {caption!r}")
        if image_id in res:
            raise ValueError(f"{path}: image id {image_id!r} has more than one result (result {k} repeats it); "
                             "give one caption per image")
        res[image_id] = caption
    return res


def evaluate_caption_files(gt_json: str | os.PathLike, results_json: str | os.PathLike,
                           java: bool | None = None) -> dict[str, float]:
    """Evaluate a COCO caption results file against a COCO captions annotation file (the results' images only).

    Args:
        gt_json: COCO captions file: ``annotations`` with ``image_id`` and ``caption``.
        results_json: JSON list of ``{"image_id": ..., "caption": str}``, one per image.
        java: see :func:`caption_metrics`.

    Returns:
        The dict of :func:`caption_metrics`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is not JSON or lacks the expected keys, an image id repeats in the results, or a
            results image id has no reference captions in ``gt_json``; the message names the file.
    """
    gt_path, res_path = Path(gt_json), Path(results_json)
    gts = _load_references(gt_path)
    res = _load_candidates(res_path)
    missing = [image_id for image_id in res if image_id not in gts]
    if missing:
        raise ValueError(f"{res_path}: {len(missing)} image id(s) have no reference captions in {gt_path}, "
                         f"e.g. {missing[:5]}{_type_hint(missing[0], gts)}; results must be for images of the "
                         "annotation file")
    return caption_metrics({image_id: gts[image_id] for image_id in res}, res, java=java)
