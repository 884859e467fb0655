"""Task-free picture helpers (matplotlib, saved as PNG): attention recording (:mod:`vitkit.viz.recording`), drawing
(:mod:`vitkit.viz.draw`) and per-class precision-recall curves (:mod:`vitkit.viz.pr_curves`)."""

from vitkit.viz.draw import DISPLAY_SIZE, PALETTE
from vitkit.viz.pr_curves import coco_precision, plot_pr_curves
from vitkit.viz.recording import AttentionRecorder, levels_to_image

__all__ = [
    "DISPLAY_SIZE",
    "PALETTE",
    "AttentionRecorder",
    "coco_precision",
    "levels_to_image",
    "plot_pr_curves",
]
