"""The inference spec: everything a trained model needs at inference beside its weights, as one versioned record.

Stored in a Lightning checkpoint as a plain dict under :data:`SPEC_KEY` (:func:`write_spec`, :func:`read_spec`),
and in a safetensors export as JSON in the metadata entry :data:`SPEC_KEY` (:func:`spec_metadata`,
:func:`spec_from_metadata`). Which task-specific fields a task uses is its :class:`SpecFields`."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

SPEC_KEY = "vitkit_spec"
"""Where the record lives: the checkpoint key and the safetensors metadata entry."""
SPEC_VERSION = 1
"""The version this vitkit writes and reads."""
COMMON_FIELDS = ("task", "model_config", "size", "max_size", "version")
"""The fields every spec holds; the others are task-specific (:data:`TASK_FIELDS`)."""
TASK_FIELDS = ("class_names", "label_to_cat_id", "num_select", "tokenizer", "generation")
"""The task-specific fields: a task records those its :class:`SpecFields` names; the others keep their defaults."""
_WHAT = {"class_names": "a list of strings", "label_to_cat_id": "a list of whole numbers",
         "num_select": "a whole number >= 1", "tokenizer": "the tokenizer's JSON string",
         "generation": "a dict of generation options"}  # what each task-specific field holds, for messages


class SpecError(ValueError):
    """An inference spec that is missing, malformed or of another version; the message names the field."""


@dataclass(frozen=True)
class SpecFields:
    """One task's part of the spec, as its descriptor declares it.

    Attributes:
        used: the task-specific fields (of :data:`TASK_FIELDS`) the task records; the others keep their defaults.
        required: those of ``used`` that may not be None.
        networks: names of the task's networks: ``model_config`` then holds one ``class_path`` / ``init_args``
            config per name; empty: ``model_config`` is one such config.

    Raises:
        ValueError: a field that is not task-specific, or a required field the task does not use."""
    used: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in (*self.used, *self.required) if name not in TASK_FIELDS]
        if unknown or not set(self.required) <= set(self.used):
            raise ValueError(f"SpecFields: used {self.used} and required {self.required} must be task-specific fields "
                             f"({', '.join(TASK_FIELDS)}), the required ones among the used ones")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class InferenceSpec:
    """What a checkpoint or export records for inference; construction checks every field's type and value.

    Attributes:
        task: the task's name (a registered task's, :mod:`vitkit.tasks`).
        model_config: ``{"class_path": ..., "init_args": {...}}``; for several networks,
            ``{"<network>": {"class_path": ..., ...}, ..., <other settings>}``.
        size: short side in px of the preprocessed images.
        max_size: cap on the long side in px (greater than ``size``), or None.
        class_names: name per contiguous label, or None.
        label_to_cat_id: dataset category id per contiguous label, or None.
        num_select: detections kept per image by the post-processing.
        tokenizer: the tokenizer's JSON (``CaptionTokenizer.to_str``).
        generation: decoding defaults (``CaptionPipeline``'s generation options).
        version: the record's version, :data:`SPEC_VERSION`.

    Raises:
        SpecError: a field of the wrong type or value, naming it."""
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
    _fields: SpecFields | None = field(default=None, init=False, repr=False, compare=False)  # set by bind()

    def __post_init__(self) -> None:
        if self.class_names is not None and isinstance(self.class_names, list | tuple):
            self.class_names = list(self.class_names)
        if self.label_to_cat_id is not None and isinstance(self.label_to_cat_id, list | tuple):
            self.label_to_cat_id = list(self.label_to_cat_id)
        self._check()

    def _bad(self, name: str, what: str) -> SpecError:
        return SpecError(f"inference spec field '{name}' {what}, got {getattr(self, name)!r}"[:400])

    def _check(self) -> None:
        bad = self._bad
        if not _is_int(self.version) or self.version != SPEC_VERSION:
            raise bad("version", f"must be {SPEC_VERSION} (the version this vitkit reads; a newer vitkit may have "
                                 "written a later one)")
        if not isinstance(self.task, str) or not self.task:
            raise bad("task", "must be a task's name")
        if not isinstance(self.model_config, dict):
            raise bad("model_config", "must be a {'class_path': ..., 'init_args': {...}} dict (or one per network)")
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
        if not isinstance(self.generation, dict) or not all(isinstance(k, str) for k in self.generation):
            raise bad("generation", "must be a dict of generation options")

    def bind(self, task: SpecFields, registered: Mapping[str, SpecFields] | None = None) -> InferenceSpec:
        """Check this spec against its task's declaration and keep it (:meth:`to_dict` then writes exactly its fields).

        Args:
            task: the declaration of the task this spec records.
            registered: every registered task's declaration by name, named in errors (default: none).

        Raises:
            SpecError: a model config not of the task's shape, a required field that is None, or a field the task
                does not use holding a value."""
        self._check_model_config(task.networks)
        for name in task.required:
            if getattr(self, name) is None:
                raise self._bad(name, f"is required for {self.task} ({_WHAT[name]})")
        for name in TASK_FIELDS:
            if name not in task.used and getattr(self, name) != _default(name):
                users = " and ".join(t for t, f in (registered or {}).items() if name in f.used)
                raise self._bad(name, f"applies to {users} only, not to a {self.task} spec" if users
                                else f"is not recorded by {self.task} specs")
        self._fields = task
        return self

    def _check_model_config(self, networks: tuple[str, ...]) -> None:
        """One ``class_path`` / ``init_args`` dict, or for a task of several networks one such dict per network."""
        config = self.model_config
        if not networks:
            if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
                raise self._bad("model_config", "must be a {'class_path': ..., 'init_args': {...}} dict")
            return
        if not isinstance(config, dict) or not all(isinstance(config.get(n), dict)
                                                   and isinstance(config[n].get("class_path"), str)
                                                   for n in networks):
            keys = ", ".join(f"'{n}': {{'class_path': ..., 'init_args': {{...}}}}" for n in networks)
            raise self._bad("model_config", f"must be a {{{keys}, ...}} dict for {self.task}")

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types (a copy): the common fields and its task's fields (after :meth:`bind`;
        before it, the task-specific fields that hold other than their defaults)."""
        used = self._fields.used if self._fields is not None else \
            [name for name in TASK_FIELDS if getattr(self, name) != _default(name)]
        return {name: copy.deepcopy(getattr(self, name)) for name in _record_fields()
                if name in COMMON_FIELDS or name in used}

    @classmethod
    def from_dict(cls, data: Any, source: str = "inference spec", tasks: Mapping[str, SpecFields] | None = None
                  ) -> InferenceSpec:
        """Read a record written by :meth:`to_dict`.

        Args:
            source: the file and key, for messages (e.g. ``"last.ckpt: 'vitkit_spec'"``).
            tasks: every task this vitkit reads, by name: the spec's task must be one and is bound to it (:meth:`bind`).
                None: only the fields' types and values are checked.

        Raises:
            SpecError: not a dict, a missing or unknown field, another version, a task not in ``tasks``, or a bad
                value; the message names ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: the inference spec must be a dict, got {type(data).__name__}")
        version = data.get("version")
        if not _is_int(version) or version != SPEC_VERSION:
            newer = " (written by a newer vitkit: upgrade vitkit to read it)" if _is_int(version) and \
                version > SPEC_VERSION else ""
            raise SpecError(f"{source}: inference spec field 'version' is {version!r}; this vitkit reads version "
                            f"{SPEC_VERSION}{newer}")
        known = set(_record_fields())
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise SpecError(f"{source}: unknown inference spec field(s) {unknown}; known: {sorted(known)}")
        missing = [name for name in ("task", "model_config", "size", "max_size") if name not in data]
        if missing:
            raise SpecError(f"{source}: inference spec field(s) {missing} missing")
        task = data["task"]
        if tasks is not None and (not isinstance(task, str) or task not in tasks):
            raise SpecError(f"{source}: inference spec field 'task' must be one of {tuple(tasks)}, got {task!r}"[:400])
        try:
            spec = cls(**copy.deepcopy(dict(data)))
            return spec if tasks is None else spec.bind(tasks[task], tasks)
        except SpecError as err:
            raise SpecError(f"{source}: {err}") from None


def _record_fields() -> list[str]:
    """The record's field names, in order (the common and the task-specific ones)."""
    return [f.name for f in fields(InferenceSpec) if f.init]


def _default(name: str) -> Any:
    """A field's default value."""
    spec_field = next(f for f in fields(InferenceSpec) if f.name == name)
    return spec_field.default if spec_field.default_factory is MISSING else spec_field.default_factory()


def write_spec(checkpoint: dict[str, Any], spec: InferenceSpec) -> None:
    """Store ``spec`` in a checkpoint dict (under :data:`SPEC_KEY`, as plain types for ``weights_only`` loads)."""
    checkpoint[SPEC_KEY] = spec.to_dict()


def read_spec(checkpoint: Mapping[str, Any], source: str = "checkpoint",
              tasks: Mapping[str, SpecFields] | None = None) -> InferenceSpec | None:
    """The spec of a checkpoint dict, or None when it has none (``tasks`` as :meth:`InferenceSpec.from_dict`'s).

    Raises:
        SpecError: a spec that is there but unreadable."""
    data = checkpoint.get(SPEC_KEY)
    return None if data is None else InferenceSpec.from_dict(data, f"{source}: '{SPEC_KEY}'", tasks)


def spec_metadata(spec: InferenceSpec) -> dict[str, str]:
    """The safetensors metadata entry holding ``spec`` (metadata values are strings: JSON)."""
    return {SPEC_KEY: json.dumps(spec.to_dict())}


def spec_from_metadata(metadata: Mapping[str, str], source: str = "safetensors file",
                       tasks: Mapping[str, SpecFields] | None = None) -> InferenceSpec | None:
    """The spec of a safetensors file's metadata, or None when it has none (``tasks`` as
    :meth:`InferenceSpec.from_dict`'s).

    Raises:
        SpecError: an entry that is not JSON or not a valid spec."""
    text = metadata.get(SPEC_KEY)
    if text is None:
        return None
    where = f"{source}: metadata '{SPEC_KEY}'"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"{where}: not JSON ({err})") from None
    return InferenceSpec.from_dict(data, where, tasks)
