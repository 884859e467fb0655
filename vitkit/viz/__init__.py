"""Pictures of what the models look at, and precision-recall curves; matplotlib, saved as PNG.

- :func:`detection_attention` / :func:`plot_detection_attention` (:mod:`vitkit.viz.detection`): for each box a
  detector keeps, its query's cross-attention in the last decoder layer. Global attention: the attention weights
  (heads averaged) as a heatmap over the image; deformable attention
  (:class:`~vitkit.models.deformable.MSDeformableAttention`): the sampling points of every head and level, sized and
  coloured by their attention weights.
- :func:`caption_attention` / :func:`plot_caption_attention` (:mod:`vitkit.viz.captioning`): for each generated
  token, the last decoder layer's cross-attention over the image when that token was predicted.
- :func:`coco_precision` / :func:`plot_pr_curves` (:mod:`vitkit.viz.pr_curves`): per-class precision-recall curves
  from COCOeval's ``eval["precision"]`` array, at IoU 0.5 and averaged over IoU 0.5:0.95 (``tools/plot_pr.py``).
- :func:`attention_folder` (:mod:`vitkit.viz.folders`): the attention pictures of every image in a folder
  (``--attention`` of ``tools/detect.py`` and ``tools/caption.py``).

Underneath: :mod:`vitkit.viz.recording` reads the weights without touching the models (:class:`AttentionRecorder`,
a forward hook that recomputes ``softmax(q k^T / sqrt(d) + mask)`` with the module's own projections and mask
builder; the test checks that ``weights @ v`` projected gives the module's output) and maps token grids onto the
image (:func:`levels_to_image`); :mod:`vitkit.viz.draw` holds the matplotlib helpers shared by the pictures.
"""

from vitkit.viz.captioning import CaptionAttention, caption_attention, plot_caption_attention
from vitkit.viz.detection import DetectionAttention, detection_attention, plot_detection_attention
from vitkit.viz.draw import DISPLAY_SIZE, PALETTE
from vitkit.viz.folders import attention_folder, attention_name
from vitkit.viz.pr_curves import coco_precision, plot_pr_curves
from vitkit.viz.recording import AttentionRecorder, deformable_sampling, levels_to_image

__all__ = [
    "DISPLAY_SIZE",
    "PALETTE",
    "AttentionRecorder",
    "CaptionAttention",
    "DetectionAttention",
    "attention_folder",
    "attention_name",
    "caption_attention",
    "coco_precision",
    "deformable_sampling",
    "detection_attention",
    "levels_to_image",
    "plot_caption_attention",
    "plot_detection_attention",
    "plot_pr_curves",
]
