"""Build a task module from a shipped config as the CLI would (links from the datamodule filled in by hand)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from vitkit.describe.module import DescribeModule
from vitkit.detection.module import DetectionModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The shipped config names, written out so that adding or losing one shows up in the CLI tests.
SHIPPED = ["caption_coco", "caption_shapes", "describe_shapes", "describe_vg", "detr_coco", "detr_r50_coco",
           "detr_shapes"]


def build_module(config: str, cls: type, links: dict, encoder: dict | None = None,
                 decoder: dict | None = None, text_links: dict | None = None,
                 object_classes: int | None = 4) -> torch.nn.Module:
    """``encoder`` / ``decoder``: init_args that replace the config's (e.g. a tiny size of the same classes);
    ``text_links``: what the CLI links into a describe config's ``model.text``; ``object_classes``: what it
    links from a caption config's ``data.object_labels`` (None: the object-token loss off, no head)."""
    model = yaml.safe_load((CONFIGS / config).read_text())["model"]
    inner = model["detector" if issubclass(cls, DetectionModule) else "captioner"]
    inner["init_args"].update(links)  # what the CLI links from the datamodule
    if cls is DescribeModule:
        model["text"]["init_args"].update(text_links or {})
    for key, args in (("encoder", encoder), ("decoder", decoder)):
        if args:
            inner["init_args"][key]["init_args"].update(args)
    if issubclass(cls, DetectionModule):
        model["num_classes"] = links["num_classes"]
    elif model.get("object_weight"):
        model["object_classes"] = object_classes
        model["object_weight"] = model["object_weight"] if object_classes else 0.0
    parser = ArgumentParser()
    parser.add_argument("--m", type=cls)
    cfg = parser.parse_object({"m": {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": model}})
    return parser.instantiate_classes(cfg).m
