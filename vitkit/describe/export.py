"""Region captions' part of checkpoints: the inference spec a training checkpoint records (task ``describe``).

The spec's model config holds both networks' resolved configs, ``detector`` (the DETR, with the data's class count)
and ``text`` (the :class:`~vitkit.captioning.Captioner` built with ``encoder: null``, with the tokenizer's values),
and the region head's ``conditioning`` and ``roi_size``; beside it the validation preprocessing sizes, the class names
and category ids, ``num_select`` and the tokenizer JSON. :func:`vitkit.load` does not build a region captioner from
it yet (it refuses the task by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vitkit.detection.export import DEFAULT_MAX_SIZE, DEFAULT_SIZE
from vitkit.utils.spec import InferenceSpec

HEAD_KEYS = ("conditioning", "roi_size")  # DenseModule hyper-parameters that shape the region head


def checkpoint_spec(detector: dict[str, Any], text: dict[str, Any], tokenizer: str, hparams: Mapping[str, Any],
                    data_hparams: Mapping[str, Any]) -> InferenceSpec:
    """The spec a region-caption training checkpoint records.

    Args:
        detector: the DETR's resolved ``class_path`` / ``init_args``.
        text: the text decoder's resolved ``class_path`` / ``init_args``.
        tokenizer: the region tokenizer's JSON (``CaptionTokenizer.to_str``).
        hparams: DenseModule's hyper-parameters (``conditioning``, ``roi_size``, ``class_names``,
            ``label_to_cat_id``, ``num_select``).
        data_hparams: the datamodule's (``val_size``, ``val_max_size`` in px); CocoDataModule's defaults when absent.
    """
    head = {key: hparams[key] for key in HEAD_KEYS if key in hparams}
    return InferenceSpec(task="describe", model_config={"detector": detector, "text": text, **head},
                         size=int(data_hparams.get("val_size", DEFAULT_SIZE)),
                         max_size=data_hparams.get("val_max_size", DEFAULT_MAX_SIZE),
                         class_names=hparams.get("class_names"), label_to_cat_id=hparams.get("label_to_cat_id"),
                         num_select=int(hparams.get("num_select", 100)), tokenizer=tokenizer)
