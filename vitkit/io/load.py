"""``vitkit.load``: the ready predictor of a training checkpoint, a safetensors export or an imported format
(official DETR weights). Every source becomes an :class:`~vitkit.utils.spec.InferenceSpec` and a state dict, which
:func:`build_predictor` turns into the registered task's predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from vitkit.kernels.precision import resolve_precision
from vitkit.tasks import tasks
from vitkit.training.task import Importer, Task
from vitkit.utils.checkpoints import check_stored_config, safe_load_checkpoint
from vitkit.utils.config import instantiate
from vitkit.utils.spec import SPEC_KEY, InferenceSpec, SpecError, SpecFields, read_spec, spec_from_metadata

__all__ = ["WeightsMismatchError", "build_predictor", "load", "load_safetensors", "read_source", "task_of",
           "task_of_spec"]


class WeightsMismatchError(ValueError):
    """Weights that do not fit the network built from the spec: missing, unexpected or of another shape."""


def load(path: str | Path, map_location: str | torch.device = "cpu", precision: str = "fp32") -> nn.Module:
    """Load a checkpoint and return the ready predictor it holds.

    A detection checkpoint gives a :class:`vitkit.detection.predictor.Detector`, a captioning one a
    :class:`vitkit.captioning.predictor.CaptionPipeline`, a describe one a :class:`vitkit.describe.predictor.Describer`,
    official DETR weights (a facebookresearch/detr ``.pth``, or Hugging Face DETR safetensors/bin or a folder with
    config.json) a DETR-R50 ``Detector``; any registered task's checkpoint: its predictor.
    Checkpoints are read with ``torch.load(weights_only=True)``; stored configs may name only vitkit, torch.nn and
    timm classes and are built with ``pretrained`` off.

    Args:
        path: a Lightning ``.ckpt``, a ``.safetensors`` export, or official DETR weights.
        map_location: device to put the predictor on.
        precision: ``"fp32"`` (the weights as trained), ``"bf16"`` (frozen BatchNorm folded, bf16 weights) or
            ``"auto"`` (bf16 where the device runs it fast). See :mod:`vitkit.kernels.precision`.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: (a ValueError) the file is not a safe weights-only checkpoint, or not readable, or its
            stored config names a class outside vitkit, torch.nn and timm.
        SpecError: (a ValueError) its inference spec is missing, malformed or of another version.
        WeightsMismatchError: (a ValueError) its weights do not fit the network its spec describes.
        ValueError: not one of vitkit's checkpoints (the message says what was expected), or its settings and
            tokenizer do not fit the network."""
    precision = resolve_precision(precision, map_location)
    spec, state, source = read_source(Path(path))
    model = build_predictor(spec, state, source).to(map_location)
    return model if precision == "fp32" else model.set_precision(precision)


def load_safetensors(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the ready predictor of a file written by :func:`vitkit.io.export.export_safetensors` (fp32).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a safetensors file, or one without vitkit's spec; otherwise as :func:`load`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    spec = spec_from_metadata(_metadata(path), str(path), _declarations())
    if spec is None:
        raise ValueError(f"{path}: no vitkit metadata ('{SPEC_KEY}', the inference spec); expected a file written by "
                         "tools/export.py --format safetensors (official DETR / Hugging Face weights load through "
                         "vitkit.load)")
    return build_predictor(spec, load_file(str(path)), str(path)).to(map_location)


# ------------------------------------------------------------------------------------------------ reading
def read_source(path: Path) -> tuple[InferenceSpec, dict[str, Tensor], str]:
    """(spec, network state dict on the CPU, source name for messages) of anything :func:`load` reads.

    Raises:
        FileNotFoundError: no file at ``path``, or a folder no importer reads.
        ValueError: as :func:`load`.
    """
    if path.is_dir():
        return _imported(path, "a folder")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        spec = spec_from_metadata(_metadata(path), str(path), _declarations())
        if spec is None:  # no vitkit spec: a foreign format's weights
            return _imported(path, f"no vitkit metadata ('{SPEC_KEY}', the inference spec)")
        return spec, load_file(str(path)), str(path)
    ckpt = safe_load_checkpoint(path, "cpu")
    if isinstance(ckpt, dict) and SPEC_KEY not in ckpt and (importer := _importer(ckpt)) is not None:
        return (*importer.read(path), str(path))
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict; expected a Lightning .ckpt "
                         "written by tools/train.py")
    spec = read_spec(ckpt, str(path), _declarations())
    if spec is None:
        raise ValueError(f"{path}: no '{SPEC_KEY}' (the inference spec) in the checkpoint; expected a Lightning .ckpt "
                         f"written by tools/train.py (top-level keys found: {sorted(map(str, ckpt))[:12]})")
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: no 'state_dict' with the {spec.task} network's weights")
    task = task_of_spec(spec, str(path))
    prefix, keys = task.state_prefix, task.state_keys
    return spec, {k[len(prefix):]: v for k, v in state_dict.items()
                  if k.startswith(prefix) and (not keys or k[len(prefix):].split(".", 1)[0] in keys)}, str(path)


def task_of_spec(spec: InferenceSpec, source: str) -> Task:
    """The registered task of a spec (:mod:`vitkit.tasks`).

    Raises:
        ValueError: a task this vitkit does not load, naming the registered ones."""
    registered = tasks()
    for task in registered:
        if task.name == spec.task:
            return task
    names = ", ".join(task.name for task in registered)
    raise ValueError(f"{source}: a {spec.task} checkpoint; vitkit.load does not build {spec.task} models "
                     f"(it loads {names})")


def task_of(model: nn.Module) -> Task:
    """The registered task of a loaded predictor (what :func:`vitkit.load` returns).

    Raises:
        TypeError: not a registered task's predictor (the message names their classes).
    """
    registered = tasks()
    for task in registered:
        if isinstance(model, task.predictor_class):
            return task
    kinds = [f"a {task.predictor_class.__module__}.{task.predictor_class.__qualname__}" for task in registered]
    listed = f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)
    raise TypeError(f"expected {listed} (what vitkit.load returns), got {type(model).__name__}")


def _declarations() -> dict[str, SpecFields]:
    """Every registered task's spec declaration, by name: what the spec readers check a spec against."""
    return {task.name: task.spec for task in tasks()}


def _importer(source: Path | dict) -> Importer | None:
    """The first registered task's importer that accepts ``source`` (a path, or a loaded checkpoint dict)."""
    return next((importer for task in tasks() for importer in task.importers if importer.accepts(source)), None)


def _imported(path: Path, what: str) -> tuple[InferenceSpec, dict[str, Tensor], str]:
    """What the importer that accepts ``path`` (a folder, or a file without vitkit's spec) reads from it.

    Raises:
        FileNotFoundError: a folder that no importer reads.
        ValueError: a file that no importer reads (``what`` says what it is), or one an importer cannot convert.
    """
    importer = _importer(path)
    if importer is not None:
        spec, state = importer.read(path)
        return spec, state, str(path)
    formats = "; ".join(importer.description for task in tasks() for importer in task.importers) or "none"
    if path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint in this folder that vitkit reads (the formats it imports: "
                                f"{formats})")
    raise ValueError(f"{path}: {what}, and not weights of a format vitkit imports ({formats}); expected a file "
                     "written by tools/export.py --format safetensors")


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err


# ------------------------------------------------------------------------------------------------ building
def build_predictor(spec: InferenceSpec, state_dict: dict[str, Tensor], source: str = "weights") -> nn.Module:
    """The predictor (eval mode, CPU) of a spec and its network's weights (keys without the Lightning prefix).

    Raises:
        CheckpointError: the config names a class outside vitkit, torch.nn and timm.
        SpecError: (a ValueError) the spec does not fit its task's declaration (its fields, its model config's shape).
        WeightsMismatchError: the weights do not fit the network.
        ValueError: a task that is not registered, a config that cannot be built, or settings (tokenizer, sizes,
            generation) that do not fit."""
    task = task_of_spec(spec, source)
    try:  # read back, it is bound already; built in code, it is checked here
        spec.bind(task.spec, _declarations())
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None
    where = f"{source}: '{SPEC_KEY}' model_config"
    config = check_stored_config(spec.model_config, where)
    try:
        net = task.build(config) if task.build is not None else instantiate(config, task.network_class)
    except Exception as err:
        raise ValueError(f"{where}: cannot build the {task.network_class.__name__} ({type(err).__name__}: "
                         f"{err})"[:2000]) from err
    load_weights(net, state_dict, source)
    try:
        predictor = task.predictor(spec, net)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    return predictor.eval()


def _storage(t: Tensor) -> Any:
    """What two names of one tied tensor share (None for empty tensors, which share nothing)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None


def load_weights(net: nn.Module, state_dict: dict[str, Tensor], source: str = "weights") -> None:
    """Load ``state_dict`` into ``net`` exactly; a tied weight may be stored once, under either name.

    Raises:
        WeightsMismatchError: missing names, unexpected names or differing shapes; the message lists them."""
    own = net.state_dict()
    stored = {_storage(own[k]) for k in state_dict if k in own} - {None}
    missing = [k for k in own if k not in state_dict and (_storage(own[k]) is None or _storage(own[k]) not in stored)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} (model {tuple(own[k].shape)})" for k in state_dict
              if k in own and state_dict[k].shape != own[k].shape]
    problems = [f"{len(items)} {what}: {', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"
                for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if items]
    if problems:
        raise WeightsMismatchError(f"{source}: the weights do not fit the {type(net).__name__} built from its spec: "
                                   + "; ".join(problems))
    net.load_state_dict(state_dict, strict=False)  # tied names not in the file are filled through their twin
