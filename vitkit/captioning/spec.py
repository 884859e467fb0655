"""Captioning's inference spec: captioner config, preprocessing sizes, tokenizer JSON and generation defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vitkit.utils.spec import InferenceSpec, SpecFields

NAME = "captioning"
"""The task's name in specs and run configs."""
FIELDS = SpecFields(used=("tokenizer", "generation"), required=("tokenizer",))
"""The task-specific fields a captioning spec records (the tokenizer is required)."""
DEFAULT_SIZE = 224


def checkpoint_spec(config: dict[str, Any], tokenizer: str, data_hparams: Mapping[str, Any]) -> InferenceSpec:
    """The spec a training checkpoint records.

    Args:
        config: the captioner's resolved ``class_path`` / ``init_args``.
        tokenizer: the tokenizer's JSON.
        data_hparams: the datamodule's: short side ``val_size`` (default 224), long side cap ``val_max_size`` or
            ``max_size`` (default 2 x ``val_size``), in px.
    """
    size = int(data_hparams.get("val_size") or DEFAULT_SIZE)
    max_size = data_hparams.get("val_max_size") or data_hparams.get("max_size") or 2 * size
    return InferenceSpec(task=NAME, model_config=config, size=size, max_size=int(max_size),
                         tokenizer=tokenizer).bind(FIELDS)


def predictor_spec(pipe: nn.Module, config: dict[str, Any]) -> InferenceSpec:
    """The spec of a loaded :class:`~vitkit.captioning.predictor.CaptionPipeline` whose captioner was built from
    ``config``."""
    return InferenceSpec(task=NAME, model_config=config, size=pipe.size, max_size=pipe.max_size,
                         tokenizer=pipe.tokenizer.to_str(), generation=dict(pipe.generation)).bind(FIELDS)
