"""Task-free picture helpers (matplotlib, saved as PNG); the task pictures live with their tasks.

- :mod:`vitkit.viz.recording` reads attention weights without touching the models (:class:`AttentionRecorder`, a
  forward hook that hands the call to :meth:`vitkit.layers.MultiheadAttention.attention_weights`; the test checks
  that ``weights @ v`` projected gives the module's output) and maps token grids onto the image
  (:func:`levels_to_image`).
- :mod:`vitkit.viz.draw` holds the matplotlib helpers shared by the pictures, and draws labelled boxes on an image
  (:func:`~vitkit.viz.draw.draw_file`: the ``--draw`` pictures of ``vitkit detect`` and ``vitkit describe``).
- :func:`coco_precision` / :func:`plot_pr_curves` (:mod:`vitkit.viz.pr_curves`): per-class precision-recall curves
  from COCOeval's ``eval["precision"]`` array, at IoU 0.5 and averaged over IoU 0.5:0.95 (``tools/plot_pr.py``).

Task pictures: :mod:`vitkit.detection.attention_maps` (each kept box's cross-attention: a heatmap for global
attention, the sampling points for deformable attention), :mod:`vitkit.captioning.attention_maps` (each generated
token's cross-attention), and :func:`vitkit.cli.attention_folders.attention_folder` (every image of a folder).
"""

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
