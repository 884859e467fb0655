"""An example outside the library: a tiny ViT learns to name the largest shape in generated images.

No download and no files: every image is drawn on the fly from a ``torch.Generator`` seeded by the caller,
so a run is reproducible. Images have random sizes (``min_size``..``max_size`` px per side, H and W drawn
independently), so batches are zero-padded with a pixel mask (True = padding) and the encoder sees real
padding, as detection and captioning will.

Each image holds a dark, textured, noisy background and 1-3 filled shapes of random colour and size; the
label is the class of the largest shape (largest bounding-box side), one of :data:`CLASSES`. The largest
shape is drawn last (on top) and its side is at least 1.3x that of every other shape, so the label is never
ambiguous. Shapes are always lighter than the background: with random contrast polarity (a dark shape on a
light background as often as the reverse) this ViT, trained from scratch, stayed at chance for 2,000 steps
(64k images; a CNN with global max pooling learned it, one with average pooling did not), whereas with
consistent polarity it reaches about 0.9 accuracy in 1,000 steps.

The model is :class:`ShapeClassifier`: a :class:`~vitkit.core.ViTEncoder` (patch 8, axial RoPE, class
token) and a linear head on the class token. :func:`run_demo` trains it with AdamW (linear warm-up, cosine
decay: vitkit's own optimizer groups and schedule, :mod:`vitkit.training.optim`) and reports accuracy on a fixed
held-out set generated from a separate seed.

    python examples/demo.py                      # ~1,000 steps, about 2 minutes on a 2-core CPU
    python examples/demo.py --steps 200 --out-dir runs/quick

Writes ``metrics.json`` and ``model.safetensors`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from vitkit.core import ViTEncoder
from vitkit.data.collate import pad_images
from vitkit.training.optim import adamw, adamw_param_groups, warmup_schedule

CLASSES: tuple[str, ...] = ("square", "disk", "triangle", "cross")
VAL_SEED = 1_000_003  # the held-out set's seed, fixed so accuracies from different training seeds compare
_MEAN, _STD = 0.5, 0.25  # input normalisation of the [0, 1] images


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _uniform(gen: torch.Generator, low: float, high: float, size: tuple[int, ...] = ()) -> Tensor:
    """Uniform floats in [low, high) of the given size (a 0-d tensor by default)."""
    return low + (high - low) * torch.rand(size, generator=gen)


def _shape_mask(kind: int, side: float, cy: float, cx: float, yy: Tensor, xx: Tensor) -> Tensor:
    """(H, W) bool mask of a filled shape of bounding-box side ``side`` px centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx  # (H, W), pixel centres relative to the shape centre
    r = side / 2
    if kind == 0:  # square
        return (dy.abs() <= r) & (dx.abs() <= r)
    if kind == 1:  # disk
        return dy * dy + dx * dx <= r * r
    if kind == 2:  # triangle, apex up: half-width grows from 0 at the top to r at the base
        return (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    t = side / 6  # cross: two bars of thickness side/3
    return ((dy.abs() <= r) & (dx.abs() <= t)) | ((dx.abs() <= r) & (dy.abs() <= t))


def make_shape_image(gen: torch.Generator, min_size: int = 32, max_size: int = 64,
                     max_shapes: int = 3) -> tuple[Tensor, int]:
    """Draw one image.

    Args:
        gen: CPU generator; the image is a deterministic function of its state.
        min_size, max_size: range of the image height and width in pixels (each drawn independently).
        max_shapes: at most this many shapes (at least 1).

    Returns:
        image: (3, H, W) float32 in [0, 1].
        label: index into :data:`CLASSES` of the largest shape.
    """
    H, W = _randint(gen, min_size, max_size), _randint(gen, min_size, max_size)
    # Background: a dark random colour, low-frequency blotches (bilinear-upsampled coarse noise), pixel noise.
    base = _uniform(gen, 0.0, 0.35, (3, 1, 1))
    coarse = torch.randn(1, 3, 4, 4, generator=gen) * float(_uniform(gen, 0.03, 0.1))  # (1, 3, 4, 4)
    image = base + F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[0]  # (3, H, W)
    image = image + torch.randn(3, H, W, generator=gen) * float(_uniform(gen, 0.02, 0.06))

    n = _randint(gen, 1, max_shapes)
    big = float(_uniform(gen, 0.35, 0.75)) * min(H, W)  # side of the largest shape, px
    sides = [big] + [float(_uniform(gen, 0.25, 1 / 1.3)) * big for _ in range(n - 1)]
    kinds = torch.randint(0, len(CLASSES), (n,), generator=gen).tolist()
    yy = torch.arange(H, dtype=torch.float32).view(H, 1) + 0.5  # (H, 1) pixel centres
    xx = torch.arange(W, dtype=torch.float32).view(1, W) + 0.5  # (1, W)
    for kind, side in reversed(list(zip(kinds, sides, strict=True))):  # smaller ones first, largest on top
        side = max(side, 6.0)
        cy = float(_uniform(gen, side / 2, H - side / 2))
        cx = float(_uniform(gen, side / 2, W - side / 2))
        colour = _uniform(gen, 0.55, 1.0, (3,))  # any hue, always lighter than the background
        mask = _shape_mask(kind, side, cy, cx, yy, xx)  # (H, W)
        image = torch.where(mask, colour.view(3, 1, 1) + 0.03 * torch.randn(3, H, W, generator=gen), image)
    return image.clamp_(0, 1), kinds[0]


def make_batch(gen: torch.Generator, n: int, min_size: int = 32, max_size: int = 64,
               max_shapes: int = 3) -> tuple[list[Tensor], Tensor]:
    """``n`` images from :func:`make_shape_image` and their (n,) int64 labels."""
    pairs = [make_shape_image(gen, min_size, max_size, max_shapes) for _ in range(n)]
    return [p[0] for p in pairs], torch.tensor([p[1] for p in pairs], dtype=torch.long)


def pad_batch(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack images of different sizes top-left aligned, zero-padded to the largest H and W.

    The demo's name for :func:`vitkit.data.collate.pad_images` (the detection collate uses the same).

    Args:
        images: list of (C, H_i, W_i) tensors.

    Returns:
        batch: (B, C, H, W) with H = max H_i, W = max W_i; zeros over padding.
        mask: (B, H, W) bool, True = padding.
    """
    return pad_images(images)


class ShapeClassifier(nn.Module):
    """ViT encoder + linear head on the class token.

    Args:
        num_classes: output classes.
        patch_size, embed_dim, depth, num_heads, pos_embed: :class:`ViTEncoder` settings.
        img_size: reference image side of a learned position table (unused by RoPE).
    """
    def __init__(self, num_classes: int = len(CLASSES), patch_size: int = 8, embed_dim: int = 96, depth: int = 4,
                 num_heads: int = 4, pos_embed: str = "rope", img_size: int = 48) -> None:
        super().__init__()
        self.encoder = ViTEncoder(patch_size=patch_size, img_size=img_size, embed_dim=embed_dim, depth=depth,
                                  num_heads=num_heads, pos_embed=pos_embed, class_token=True)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Classify.

        Args:
            images: (B, 3, H, W) in [0, 1], zero-padded.
            mask: (B, H, W) bool, True = padding.

        Returns:
            (B, num_classes) logits.
        """
        x = (images - _MEAN) / _STD
        if mask is not None:
            x = x.masked_fill(mask[:, None], 0.0)  # padding stays zero after normalisation
        out = self.encoder(x, mask)
        return self.head(out.tokens[:, 0])  # class token, (B, num_classes)


@torch.no_grad()
def evaluate(model: nn.Module, images: list[Tensor], labels: Tensor, batch_size: int = 128,
             precision: str = "fp32") -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` over a list of images.

    Returns:
        (accuracy in [0, 1], mean loss in nats).
    """
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(images), batch_size):
        x, m = pad_batch(images[i: i + batch_size])
        y = labels[i: i + batch_size]
        with _autocast(precision):
            logits = model(x, m).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    model.train(was_training)
    return correct / len(images), loss_sum / len(images)


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be fp32|bf16, got {precision!r}")


def run_demo(
    steps: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    min_size: int = 32,
    max_size: int = 64,
    threads: int | None = None,
    log_every: int = 50,
    out_dir: str | None = None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: int | None = None,
    val_size: int = 512,
    max_shapes: int = 3,
    precision: str = "fp32",
    pos_embed: str = "rope",
    embed_dim: int = 96,
    depth: int = 4,
    num_heads: int = 4,
) -> dict:
    """Train a tiny ViT on generated shape images and evaluate it on a held-out set.

    Args:
        steps: optimiser steps.
        batch_size: images per step, generated on the fly.
        seed: seeds the training images and the model's initial weights.
        min_size, max_size: image side range in pixels.
        threads: torch intra-op threads for the run (restored afterwards); None keeps the current setting.
        log_every: print a progress line every this many steps (0: silent).
        out_dir: if given, write ``metrics.json`` and ``model.safetensors`` (the classifier's weights) there.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases, norms, the class token).
        warmup: linear warm-up steps (default: 10% of ``steps``).
        val_size: held-out images, generated from :data:`VAL_SEED` (the same set for every training seed).
        max_shapes: 1..max_shapes shapes per image.
        precision: "fp32" or "bf16" (CPU autocast).
        pos_embed, embed_dim, depth, num_heads: encoder settings (patch size 8, class token).

    Returns:
        Metrics: ``val_accuracy``, ``val_loss`` (nats), ``chance_accuracy`` (1/4), ``train_loss_first`` and
        ``train_loss_last`` (mean over the first / last 10% of steps), ``loss_curve`` ([step, mean loss since
        the previous entry] at each log line), ``steps``, ``seconds`` (whole run), ``train_seconds``,
        ``images_per_sec`` (training), ``num_params`` and the run settings.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    _autocast(precision)  # validate early
    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
            torch.manual_seed(2**32 + seed)  # weights: a stream distinct from the data generator's
            model = ShapeClassifier(embed_dim=embed_dim, depth=depth, num_heads=num_heads, pos_embed=pos_embed,
                                    img_size=(min_size + max_size) // 2)
            data = {"min_size": min_size, "max_size": max_size, "max_shapes": max_shapes}
            val_images, val_labels = make_batch(torch.Generator().manual_seed(VAL_SEED), val_size, **data)
            metrics = _train(model, torch.Generator().manual_seed(seed), data, steps=steps, batch_size=batch_size,
                             lr=lr, weight_decay=weight_decay, warmup=warmup, precision=precision,
                             log_every=log_every)
            val_acc, val_loss = evaluate(model, val_images, val_labels, precision=precision)
    finally:
        torch.set_num_threads(old_threads)
    if log_every:
        print(f"val accuracy {val_acc:.4f} (chance {1 / len(CLASSES):.2f}) on {val_size} held-out images, "
              f"val loss {val_loss:.4f}", flush=True)
    metrics = {
        "val_accuracy": round(val_acc, 4),
        "val_loss": round(val_loss, 4),
        "chance_accuracy": 1 / len(CLASSES),
        **metrics,
        "seconds": round(time.perf_counter() - t_start, 2),
        "val_size": val_size,
        "num_params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads() if threads is None else threads,
        "config": {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "weight_decay": weight_decay,
                   "precision": precision, "pos_embed": pos_embed, "embed_dim": embed_dim, "depth": depth,
                   "num_heads": num_heads, "patch_size": 8, **data},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _train(model: nn.Module, gen: torch.Generator, data: dict, *, steps: int, batch_size: int, lr: float,
           weight_decay: float, warmup: int | None, precision: str, log_every: int) -> dict:
    """The training loop of :func:`run_demo`; returns the loss and speed entries of its metrics."""
    opt = adamw(adamw_param_groups(model, lr, weight_decay), lr=lr, weight_decay=weight_decay, fused=False)
    warmup = max(1, steps // 10) if warmup is None else max(1, warmup)
    sched = warmup_schedule(opt, steps, warmup)  # linear warm-up, then cosine to 0
    losses: list[float] = []
    curve: list[list[float]] = []
    model.train()
    t0 = t_log = time.perf_counter()
    n_log = 0
    for step in range(1, steps + 1):
        images, labels = make_batch(gen, batch_size, **data)
        x, mask = pad_batch(images)  # (B, 3, H, W), (B, H, W)
        with _autocast(precision):
            logits = model(x, mask)  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        n_log += 1
        if log_every and (step % log_every == 0 or step == steps):
            now = time.perf_counter()
            mean = sum(losses[-n_log:]) / n_log
            curve.append([step, round(mean, 4)])
            print(f"step {step:5d}/{steps}  loss {mean:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{n_log * batch_size / (now - t_log):6.1f} img/s", flush=True)
            t_log, n_log = now, 0
    train_seconds = time.perf_counter() - t0
    k = max(1, steps // 10)
    return {
        "train_loss_first": round(sum(losses[:k]) / k, 4),
        "train_loss_last": round(sum(losses[-k:]) / k, 4),
        "loss_curve": curve,
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "images_per_sec": round(steps * batch_size / train_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the training images and weights")
    parser.add_argument("--out-dir", default="runs/demo", help="where metrics.json and model.safetensors go")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-every", type=int, default=100, help="steps between progress lines (0: quiet)")
    args = parser.parse_args(argv)

    m = run_demo(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                 log_every=args.log_every, out_dir=args.out_dir)
    print(f"done: val accuracy {m['val_accuracy']:.4f} (chance {m['chance_accuracy']:.2f}) after {m['steps']} steps "
          f"in {m['seconds']:.1f} s ({m['images_per_sec']:.0f} img/s); wrote {args.out_dir}/metrics.json and "
          f"{args.out_dir}/model.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
