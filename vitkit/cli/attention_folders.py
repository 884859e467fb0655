"""The attention pictures of every image in a folder (``--attention`` of ``vitkit detect`` and
``vitkit caption``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from vitkit.captioning.attention_maps import caption_attention, plot_caption_attention
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.data.folder import ImageFolder, overwrite_error, progress_bar
from vitkit.detection.attention_maps import detection_attention, plot_detection_attention
from vitkit.detection.predictor import Detector
from vitkit.viz.draw import draw_path


def attention_folder(model: nn.Module, folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                     recursive: bool = True, size_hints: Mapping[str, tuple[int, int]] | None = None,
                     score_threshold: float = 0.5, progress: bool = False,
                     **generation: Any) -> tuple[int, list[tuple[str, str]]]:
    """Write the attention picture of every readable image of ``folder`` under ``out_dir`` (same relative path, named by
    :func:`~vitkit.viz.draw.draw_path` keeping only ``.png``: ``a.jpg`` becomes ``a.jpg.png``).

    Args:
        model: a ``Detector`` (one panel per box above ``score_threshold``) or a ``CaptionPipeline`` (one panel per
            token; ``generation`` options).
        folder, recursive, size_hints: as :class:`~vitkit.data.folder.ImageFolder`.

    Returns:
        (pictures written, [(file, reason)] of the images that could not be read or drawn)."""
    if not isinstance(model, Detector | CaptionPipeline):
        raise TypeError(f"expected a Detector or a CaptionPipeline, got {type(model).__name__}")
    error = overwrite_error("--attention", out_dir, folder)
    if error is not None:
        raise ValueError(error)
    dataset = ImageFolder(folder, recursive=recursive, size_hints=size_hints)
    written, failures = 0, []
    with progress_bar("attention", progress) as bar:
        task = bar.add_task("attention", total=len(dataset))
        for i in range(len(dataset)):
            record = dataset[i]
            bar.advance(task)
            if record["error"] is not None:
                failures.append((record["file"], record["error"]))
                continue
            dest = Path(out_dir) / draw_path(record["file"], keep=(".png",))
            try:
                if isinstance(model, Detector):
                    plot_detection_attention(detection_attention(model, record["image"], score_threshold), dest)
                else:
                    plot_caption_attention(caption_attention(model, record["image"], **generation), dest)
            except Exception as err:  # one picture that cannot be made costs only itself
                failures.append((record["file"], f"attention picture failed: {type(err).__name__}: {err}"))
                continue
            written += 1
    return written, failures
