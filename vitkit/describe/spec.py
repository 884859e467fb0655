"""The inference spec of task ``describe``: ``detector`` and ``text`` configs, ``roi_size``, preprocessing
sizes, class names and category ids, ``num_select`` and the tokenizer JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vitkit.captioning.model import Captioner
from vitkit.captioning.spec import FIELDS as CAPTION_FIELDS
from vitkit.describe.model import DescribeModel, RegionCaptionHead
from vitkit.detection.model import DETR
from vitkit.detection.spec import DEFAULT_MAX_SIZE, DEFAULT_SIZE
from vitkit.detection.spec import FIELDS as DETECTION_FIELDS
from vitkit.utils.config import instantiate
from vitkit.utils.spec import InferenceSpec, SpecFields

NAME = "describe"
"""The task's name in specs and run configs."""
FIELDS = SpecFields(used=(*DETECTION_FIELDS.used, *CAPTION_FIELDS.used), required=CAPTION_FIELDS.required,
                    networks=("detector", "text"))
"""The task-specific fields a describe spec records: detection's and captioning's; its model config holds the
``detector`` and ``text`` networks' configs."""
HEAD_KEYS = ("roi_size",)  # DescribeModule hyper-parameters that shape the region head


def checkpoint_spec(detector: dict[str, Any], text: dict[str, Any], tokenizer: str, hparams: Mapping[str, Any],
                    data_hparams: Mapping[str, Any]) -> InferenceSpec:
    """The spec a describe training checkpoint records.

    Args:
        detector, text: the DETR's and text decoder's resolved ``class_path`` / ``init_args``.
        tokenizer: the region tokenizer's JSON.
        hparams: DescribeModule's hyper-parameters (``roi_size``, ``class_names``, ``label_to_cat_id``, ``num_select``).
        data_hparams: the datamodule's (``val_size``, ``val_max_size`` in px); CocoDataModule's defaults when absent.
    """
    head = {key: hparams[key] for key in HEAD_KEYS if key in hparams}
    return InferenceSpec(task=NAME, model_config={"detector": detector, "text": text, **head},
                         size=int(data_hparams.get("val_size", DEFAULT_SIZE)),
                         max_size=data_hparams.get("val_max_size", DEFAULT_MAX_SIZE),
                         class_names=hparams.get("class_names"), label_to_cat_id=hparams.get("label_to_cat_id"),
                         num_select=int(hparams.get("num_select", 100)), tokenizer=tokenizer).bind(FIELDS)


def build_network(config: dict[str, Any]) -> DescribeModel:
    """The describe network of a spec's model config.

    Raises:
        ValueError: a key other than ``detector``, ``text`` and :data:`HEAD_KEYS`, or a network that cannot be built.
    """
    known = ("detector", "text", *HEAD_KEYS)
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"unknown describe model_config key(s) {unknown}; known: {', '.join(known)}")
    detector, text = instantiate(config["detector"], DETR), instantiate(config["text"], Captioner)
    head = RegionCaptionHead(detector.decoder.dim, text, **{k: config[k] for k in HEAD_KEYS if k in config})
    return DescribeModel(detector, head)


def predictor_spec(describer: nn.Module, config: dict[str, Any]) -> InferenceSpec:
    """The spec of a loaded :class:`~vitkit.describe.predictor.Describer` whose network was built from ``config``."""
    return InferenceSpec(task=NAME, model_config=config, size=describer.size, max_size=describer.max_size,
                         class_names=describer.class_names, label_to_cat_id=describer.label_to_cat_id,
                         num_select=describer.num_select, tokenizer=describer.tokenizer.to_str(),
                         generation=dict(describer.captions.generation)).bind(FIELDS)
