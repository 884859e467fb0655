"""Detection's inference spec (:data:`FIELDS`): the detector config, validation preprocessing sizes, class names,
category ids and ``num_select``, from training (:func:`checkpoint_spec`) or a loaded Detector (:func:`predictor_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vitkit.utils.spec import InferenceSpec, SpecFields

NAME = "detection"
"""The task's name in specs and run configs."""
FIELDS = SpecFields(used=("class_names", "label_to_cat_id", "num_select"))
"""The task-specific fields a detection spec records."""
DEFAULT_SIZE, DEFAULT_MAX_SIZE = 800, 1333  # CocoDataModule's validation sizes


def checkpoint_spec(config: dict[str, Any], hparams: Mapping[str, Any], data_hparams: Mapping[str, Any]
                    ) -> InferenceSpec:
    """The spec a training checkpoint records, from the detector's resolved config, DetectionModule's
    hyper-parameters and the datamodule's (``val_size``, ``val_max_size``; CocoDataModule's defaults if absent)."""
    return InferenceSpec(task=NAME, model_config=config, size=int(data_hparams.get("val_size", DEFAULT_SIZE)),
                         max_size=data_hparams.get("val_max_size", DEFAULT_MAX_SIZE),
                         class_names=hparams.get("class_names"), label_to_cat_id=hparams.get("label_to_cat_id"),
                         num_select=int(hparams.get("num_select", 100))).bind(FIELDS)


def predictor_spec(detector: nn.Module, config: dict[str, Any]) -> InferenceSpec:
    """The spec of a loaded :class:`~vitkit.detection.predictor.Detector` whose network was built from ``config``."""
    return InferenceSpec(task=NAME, model_config=config, size=detector.size, max_size=detector.max_size,
                         class_names=detector.class_names, label_to_cat_id=detector.label_to_cat_id,
                         num_select=detector.postprocess.num_select).bind(FIELDS)
