"""Drawing helpers shared by the pictures: the input as an RGB image scaled for display, panel grids, boxes,
heatmap overlays, and saving a figure as PNG (matplotlib's object API, no pyplot state); and labelled boxes drawn
on an image at its own resolution (the folder commands' ``--draw`` pictures: :func:`draw_file`)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from vitkit.data.images import ImageReadError, load_rgb, to_rgb

DISPLAY_SIZE = 480  # long side in px of the pictures' image panels
# Colours by class (matplotlib's tab10), so a class keeps its colour across pictures (and the folder tool's boxes).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
DRAW_KEEP_SUFFIXES = (".png", ".jpg", ".jpeg")
# Labels on a filled background in the box colour where torchvision has it (0.23+): readable on any image.
_LABEL_STYLE = {"fill_labels": True} if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters else {}


# ----------------------------------------------------------------------------------------------- inputs
def rgb(image: str | os.PathLike | Image.Image | Tensor) -> Image.Image:
    """A path, a PIL image or a (3, H, W) tensor (uint8, or float in [0, 1]) -> an RGB PIL image (as the
    predictors read it)."""
    if isinstance(image, str | os.PathLike):
        return load_rgb(image)
    if isinstance(image, Tensor):
        t = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(t.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    return to_rgb(image)


def display(img: Image.Image, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The image scaled so its long side is ``size`` px: (H, W, 3) uint8."""
    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST))


# ----------------------------------------------------------------------------------------------- figures
def grid_figure(panels: int, cols: int, aspect: float) -> tuple[Figure, list]:
    """A figure of ``panels`` square-ish panels (height/width ``aspect``) in rows of ``cols``; spare axes hidden."""
    cols = max(1, min(cols, panels))
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows * aspect + 0.4), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes[panels:]:
        ax.axis("off")
    return fig, axes


def image_axes(ax, image: np.ndarray, title: str) -> None:
    """Show ``image`` (H, W, 3) in ``ax`` with a small title and no ticks."""
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap(ax, density: np.ndarray, image_hw: tuple[int, int], alpha: float) -> None:
    """Overlay ``density`` (H, W), normalised to its maximum, in ``jet`` over the (H, W) image shown in ``ax``."""
    H, W = image_hw
    heat = density / max(float(density.max()), 1e-12)
    ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1, extent=(0, W, H, 0))


def box(ax, xyxy: np.ndarray, colour: str, label: str | None = None, linestyle: str = "-") -> None:
    """Draw an xyxy box (px of the shown image), with ``label`` on a patch of its colour above the top-left corner."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2,
                           linestyle=linestyle))
    if label:
        ax.text(x0, y0, label, color="white", fontsize=7, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.9})


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------------------- labelled boxes
def draw_path(rel: str, keep: tuple[str, ...] = DRAW_KEEP_SUFFIXES) -> str:
    """Output name of a picture made from the input ``rel``: kept when its suffix is in ``keep``, else + ".png"
    (``anim.gif`` -> ``anim.gif.png``), so two inputs never share an output."""
    return rel if Path(rel).suffix.lower() in keep else f"{rel}.png"


def draw_detections(image: Image.Image | Tensor, boxes: Tensor, labels: Sequence[int], names: Sequence[str],
                    scores: Sequence[float]) -> Tensor:
    """The image (RGB PIL or (3, H, W) uint8) with labelled boxes drawn: (3, H, W) uint8.

    Args:
        boxes: (K, 4) xyxy pixels of that image.
        labels: K contiguous labels (pick the colours, :data:`PALETTE`); names: K texts; scores: K scores. Each box
            is labelled ``"name score"``."""
    img = image if isinstance(image, Tensor) else F.pil_to_tensor(image)  # (3, H, W) uint8
    if not len(boxes):
        return img
    short = min(img.shape[-2:])
    font = _label_font()
    return draw_bounding_boxes(img, boxes.float(), labels=[f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)],
                               colors=[PALETTE[lab % len(PALETTE)] for lab in labels], width=max(1, round(short / 200)),
                               font=font, font_size=max(10, round(short / 40)) if font else None, **_LABEL_STYLE)


def _label_font() -> str | None:
    """A scalable TrueType font (matplotlib's DejaVu Sans), so labels grow with the image; None: Pillow's default."""
    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def draw_file(folder: str | os.PathLike, file: str, size_hint: tuple[int, int] | None, boxes: Tensor | Sequence,
              labels: Sequence[int], names: Sequence[str], scores: Sequence[float],
              draw_dir: str | os.PathLike) -> str | None:
    """Decode ``folder/file`` (``size_hint`` as :func:`~vitkit.data.images.load_rgb`), draw the boxes ((K, 4) xyxy px)
    and save it under ``draw_dir`` at :func:`draw_path` of ``file``.

    Returns:
        None, or why drawing failed (``"drawing failed: ..."``)."""
    dest = Path(draw_dir) / draw_path(file)
    try:
        pixels = draw_detections(load_rgb(Path(folder) / file, size_hint=size_hint),
                                 torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels, names,
                                 scores)  # (3, H, W) uint8
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(dest)
    except (ImageReadError, OSError, ValueError) as err:
        return f"drawing failed: {type(err).__name__}: {err}"
    return None
