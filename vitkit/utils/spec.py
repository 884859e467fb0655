"""The inference spec: everything a trained model needs at inference, beside its weights, as one versioned record.

An :class:`InferenceSpec` holds the task, the model config (``class_path`` / ``init_args``, what jsonargparse
builds), the preprocessing sizes and the task's settings: class names, category ids and detections kept per image
for detection; the tokenizer (its serialised JSON) and generation defaults for captioning; both for ``describe``
(detect, then caption each object; its model config holds the ``detector`` and ``text`` networks' configs). This
module is the only one that knows where the record is stored:

- in a Lightning checkpoint, as a plain dict under :data:`SPEC_KEY` (:func:`write_spec`, :func:`read_spec`); the
  Lightning modules write it in ``on_save_checkpoint``;
- in a safetensors export, as JSON in the metadata entry :data:`SPEC_KEY` (:func:`spec_metadata`,
  :func:`spec_from_metadata`).

:mod:`vitkit.io` reads it back and builds the predictor (``vitkit.load``). The post-processing of a detector is not
part of the record: it follows from the built model's head (sigmoid or softmax). Predictions do not depend on how
far a batch is padded, so the datamodules' ``pad_to_multiple`` is not part of it either.

Version history: 1, the first record (vitkit 0.1.0); task ``describe`` (detect, then caption each object) added to
version 1 (no field changed: an older vitkit refuses the task by name).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

SPEC_KEY = "vitkit_spec"
"""Where the record lives: the checkpoint key and the safetensors metadata entry."""
SPEC_VERSION = 1
"""The version this vitkit writes and reads."""
TASKS = ("detection", "captioning", "describe")
_DETECTION_FIELDS, _CAPTION_FIELDS = ("class_names", "label_to_cat_id", "num_select"), ("tokenizer", "generation")
_TASK_FIELDS = {"detection": _DETECTION_FIELDS, "captioning": _CAPTION_FIELDS,
                "describe": _DETECTION_FIELDS + _CAPTION_FIELDS}  # the task-specific fields each task uses
_NETWORKS = {"describe": ("detector", "text")}  # a task of several networks: model_config holds one config each


class SpecError(ValueError):
    """An inference spec that is missing, malformed or of another version; the message names the field."""


def _unused_fields(task: str) -> set[str]:
    """The task-specific fields that ``task`` does not use (they keep their defaults and are not stored)."""
    return {name for fields_ in _TASK_FIELDS.values() for name in fields_} - set(_TASK_FIELDS[task])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class InferenceSpec:
    """What a checkpoint or export records for inference (see the module docstring).

    Attributes:
        task: "detection", "captioning" or "describe" (detect, then caption each object).
        model_config: the network's ``{"class_path": ..., "init_args": {...}}`` (a DETR or a Captioner); for
            "describe", ``{"detector": {...}, "text": {...}, ...}``: the DETR's and the text decoder's configs (each
            with a ``class_path``) and the region head's settings.
        size: short side in px of the preprocessed images.
        max_size: cap on the long side in px (greater than ``size``), or None.
        class_names: detection, describe: name per contiguous label, or None.
        label_to_cat_id: detection, describe: dataset category id per contiguous label, or None.
        num_select: detection, describe: detections kept per image by the post-processing.
        tokenizer: captioning, describe: the tokenizer's JSON (``CaptionTokenizer.to_str``); required there.
        generation: captioning, describe: decoding defaults (``CaptionPipeline``'s generation options).
        version: the record's version, :data:`SPEC_VERSION`.

    Raises:
        SpecError: a field of the wrong type or value, or a field of the other task, naming it.
    """
    task: str
    model_config: dict[str, Any]
    size: int
    max_size: int | None
    class_names: list[str] | None = None
    label_to_cat_id: list[int] | None = None
    num_select: int = 100
    tokenizer: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.class_names is not None and isinstance(self.class_names, list | tuple):
            self.class_names = list(self.class_names)
        if self.label_to_cat_id is not None and isinstance(self.label_to_cat_id, list | tuple):
            self.label_to_cat_id = list(self.label_to_cat_id)
        self._check()

    def _check(self) -> None:
        def bad(name: str, what: str) -> SpecError:
            return SpecError(f"inference spec field '{name}' {what}, got {getattr(self, name)!r}"[:400])

        if not _is_int(self.version) or self.version != SPEC_VERSION:
            raise bad("version", f"must be {SPEC_VERSION} (the version this vitkit reads; a newer vitkit may have "
                                 "written a later one)")
        if self.task not in TASKS:
            raise bad("task", f"must be one of {TASKS}")
        self._check_model_config(bad)
        if not _is_int(self.size) or self.size < 1:
            raise bad("size", "must be a whole number of px >= 1")
        if self.max_size is not None and (not _is_int(self.max_size) or self.max_size <= self.size):
            raise bad("max_size", f"must be None or a whole number of px above size ({self.size})")
        if self.class_names is not None and not (isinstance(self.class_names, list)
                                                 and all(isinstance(n, str) for n in self.class_names)):
            raise bad("class_names", "must be None or a list of strings")
        if self.label_to_cat_id is not None and not (isinstance(self.label_to_cat_id, list)
                                                     and all(_is_int(i) for i in self.label_to_cat_id)):
            raise bad("label_to_cat_id", "must be None or a list of whole numbers")
        if self.class_names is not None and self.label_to_cat_id is not None \
                and len(self.class_names) != len(self.label_to_cat_id):
            raise bad("label_to_cat_id", f"must have one id per class name ({len(self.class_names)})")
        if not _is_int(self.num_select) or self.num_select < 1:
            raise bad("num_select", "must be a whole number >= 1")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise bad("tokenizer", "must be the tokenizer's JSON string")
        if "tokenizer" in _TASK_FIELDS[self.task] and self.tokenizer is None:
            raise bad("tokenizer", f"is required for {self.task} (the tokenizer's JSON string)")
        if not isinstance(self.generation, dict) or not all(isinstance(k, str) for k in self.generation):
            raise bad("generation", "must be a dict of generation options")
        defaults = {f.name: f.default for f in fields(self)}
        for name in _unused_fields(self.task):
            value = getattr(self, name)
            if value != (defaults[name] if name != "generation" else {}):
                users = " and ".join(t for t in TASKS if name in _TASK_FIELDS[t])
                raise bad(name, f"applies to {users} only, not to a {self.task} spec")

    def _check_model_config(self, bad: Any) -> None:
        """One ``class_path`` / ``init_args`` dict, or for a task of several networks one such dict per network."""
        config = self.model_config
        networks = _NETWORKS.get(self.task)
        if networks is None:
            if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
                raise bad("model_config", "must be a {'class_path': ..., 'init_args': {...}} dict")
            return
        if not isinstance(config, dict) or not all(isinstance(config.get(n), dict)
                                                   and isinstance(config[n].get("class_path"), str)
                                                   for n in networks):
            keys = ", ".join(f"'{n}': {{'class_path': ..., 'init_args': {{...}}}}" for n in networks)
            raise bad("model_config", f"must be a {{{keys}, ...}} dict for {self.task}")

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types (a copy): the common fields and those of its task."""
        unused = _unused_fields(self.task)
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in unused}

    @classmethod
    def from_dict(cls, data: Any, source: str = "inference spec") -> InferenceSpec:
        """Read a record written by :meth:`to_dict`.

        Args:
            data: the stored dict.
            source: the file and key, for messages (e.g. ``"last.ckpt: 'vitkit_spec'"``).

        Raises:
            SpecError: not a dict, a missing or unknown field, another version, or a bad value; the message names
                ``source`` and the field.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: the inference spec must be a dict, got {type(data).__name__}")
        version = data.get("version")
        if not _is_int(version) or version != SPEC_VERSION:
            newer = " (written by a newer vitkit: upgrade vitkit to read it)" if _is_int(version) and \
                version > SPEC_VERSION else ""
            raise SpecError(f"{source}: inference spec field 'version' is {version!r}; this vitkit reads version "
                            f"{SPEC_VERSION}{newer}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise SpecError(f"{source}: unknown inference spec field(s) {unknown}; known: {sorted(known)}")
        missing = [name for name in ("task", "model_config", "size", "max_size") if name not in data]
        if missing:
            raise SpecError(f"{source}: inference spec field(s) {missing} missing")
        try:
            return cls(**copy.deepcopy(dict(data)))
        except SpecError as err:
            raise SpecError(f"{source}: {err}") from None


def write_spec(checkpoint: dict[str, Any], spec: InferenceSpec) -> None:
    """Store ``spec`` in a checkpoint dict (under :data:`SPEC_KEY`, as plain types for ``weights_only`` loads)."""
    checkpoint[SPEC_KEY] = spec.to_dict()


def read_spec(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> InferenceSpec | None:
    """The spec of a checkpoint dict, or None when it has none.

    Raises:
        SpecError: a spec that is there but unreadable (see :meth:`InferenceSpec.from_dict`).
    """
    data = checkpoint.get(SPEC_KEY)
    return None if data is None else InferenceSpec.from_dict(data, f"{source}: '{SPEC_KEY}'")


def spec_metadata(spec: InferenceSpec) -> dict[str, str]:
    """The safetensors metadata entry holding ``spec`` (metadata values are strings: JSON)."""
    return {SPEC_KEY: json.dumps(spec.to_dict())}


def spec_from_metadata(metadata: Mapping[str, str], source: str = "safetensors file") -> InferenceSpec | None:
    """The spec of a safetensors file's metadata, or None when it has none.

    Raises:
        SpecError: an entry that is not JSON or not a valid spec.
    """
    text = metadata.get(SPEC_KEY)
    if text is None:
        return None
    where = f"{source}: metadata '{SPEC_KEY}'"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"{where}: not JSON ({err})") from None
    return InferenceSpec.from_dict(data, where)
