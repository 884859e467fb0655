"""The GPU check's training run: the model of ``configs/detr_coco.yaml`` for a fixed number of steps (issue 18).

The detector and the module's recipe come from the config file (``model.detector`` and ``model.criterion`` built by
:func:`vitkit.utils.config.instantiate`, the other ``model`` keys passed to :class:`DetectionModule`, 80 classes as
COCO's annotation file gives; only the warmup is shortened, to a fifth of the steps, so that the lr is not still near
zero when the check ends); the Lightning ``Trainer`` runs with the config's precision (``bf16-mixed``, through
:func:`vitkit.kernels.precision.training_precision`) and gradient clipping, one device, no validation, no logger.
Data: generated COCO-sized images (``size`` x ``size * 4 // 3`` rounded to 16, no padding), 1-6 coloured
rectangles on noise, label = colour; a pool of 2 batches made on the device is cycled, so the loss can fall within
a few dozen steps. The batch is the largest power of two up to ``max_batch`` whose training step (forward, losses,
backward under bf16 autocast) fits, unless ``train_batch`` is given.

Reported: images/s over the steps after the first quarter (each step timed with cuda synchronisation), peak memory
(``torch.cuda.max_memory_allocated``; peak RSS on the CPU), the loss of every step and whether the mean of the last
3 is below the mean of the first 3, and the FLOPs of one step (``FlopCounterMode``; deformable sampling is not
counted, so MFU is a lower bound).
"""

from __future__ import annotations

import copy
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from benchmarks.common import count_flops
from benchmarks.gpu_peers import GpuSettings
from vitkit.detection import DETR, SetCriterion
from vitkit.detection.module import DetectionModule
from vitkit.kernels.precision import training_precision
from vitkit.utils.config import instantiate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "detr_coco.yaml"
NUM_CLASSES = 80


def build_module(s: GpuSettings) -> tuple[DetectionModule, dict[str, Any]]:
    """The DetectionModule of configs/detr_coco.yaml (tiny: 2 + 2 layers, 20 + 40 queries) and the trainer keys."""
    cfg = yaml.safe_load(CONFIG.read_text())
    model = copy.deepcopy(cfg["model"])
    det, criterion = model.pop("detector"), model.pop("criterion")
    det["init_args"]["num_classes"] = NUM_CLASSES
    model["warmup_steps"] = max(1, s.train_steps // 5)  # the recipe's 1000 would keep the lr near 0 in the check
    if s.tiny:
        det["init_args"].update(num_queries=20, num_queries_one2many=40)
        det["init_args"]["encoder"]["init_args"]["depth"] = 2
        det["init_args"]["decoder"]["init_args"]["depth"] = 2
    torch.manual_seed(s.seed)
    module = DetectionModule(instantiate(det, DETR), instantiate(criterion, SetCriterion), num_classes=NUM_CLASSES,
                             **model)
    return module, cfg["trainer"]


def make_batch(batch: int, size: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(images (B,3,H,W), mask (B,H,W) all False, targets with normalised cxcywh boxes and labels) on ``device``."""
    h, w = size, (size * 4 // 3) // 16 * 16
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(batch, 3, h, w, generator=g)
    targets = []
    for i in range(batch):
        n = 1 + i % 6
        wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        for (cx, cy), (bw, bh), lab in zip(c.tolist(), wh.tolist(), labels.tolist(), strict=True):
            x0, x1 = int((cx - bw / 2) * w), int((cx + bw / 2) * w)
            y0, y1 = int((cy - bh / 2) * h), int((cy + bh / 2) * h)
            colour = torch.tensor([(lab % 5) - 2.0, (lab // 5 % 4) - 1.5, (lab // 20) - 1.5])  # one per class
            images[i, :, y0:y1, x0:x1] = colour[:, None, None]
        targets.append({"boxes": torch.cat((c, wh), 1).to(device), "labels": labels.to(device),
                        "image_id": torch.tensor(seed * 1000 + i, device=device)})
    return images.to(device), torch.zeros(batch, h, w, dtype=torch.bool, device=device), targets


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _probe_step(module: DetectionModule, batch: tuple, device: str) -> None:
    """Forward, losses and backward under bf16 autocast (what a training step holds in memory, less the optimizer)."""
    images, mask, targets = batch
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = module.criterion(module.detector(images, mask, targets), targets)["loss"]
    loss.backward()
    module.zero_grad(set_to_none=True)
    _sync(device)


def step_gflop(module: DetectionModule, batch: int, s: GpuSettings) -> float:
    """GFLOPs of one training step (forward + backward) at ``batch``, counted by FlopCounterMode."""
    one = make_batch(batch, s.train_size, s.device, s.seed)
    return count_flops(lambda: _probe_step(module, one, s.device)) / 1e9


def largest_batch(module: DetectionModule, s: GpuSettings) -> tuple[int, list[int]]:
    """The largest power of two <= ``s.max_batch`` whose training step fits in memory, and the sizes tried."""
    best, tried, b = 0, [], 1
    while b <= s.max_batch:
        tried.append(b)
        try:
            _probe_step(module, make_batch(b, s.train_size, s.device, s.seed), s.device)
            best = b
        except torch.OutOfMemoryError:
            break
        finally:
            module.zero_grad(set_to_none=True)
            if torch.device(s.device).type == "cuda":
                torch.cuda.empty_cache()
        b *= 2
    if best == 0:
        raise RuntimeError(f"no batch size fits (tried {tried})")
    return best, tried


class Pool(torch.utils.data.Dataset):
    """``steps`` items cycling over a few ready-made batches (DataLoader with ``batch_size=None``)."""

    def __init__(self, batches: list[tuple], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple:
        return self.batches[i % len(self.batches)]


class StepTimer(L.Callback):
    """Wall time (device-synchronised) and loss of every training step."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self.losses, self._t0 = device, [], [], 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        _sync(self.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           i: int) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter() - self._t0)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def _fit(module: DetectionModule, trainer_cfg: dict, batch: int, s: GpuSettings) -> tuple[StepTimer, float]:
    cuda = torch.device(s.device).type == "cuda"
    precision, _ = training_precision(trainer_cfg.get("precision", "bf16-mixed"), "gpu" if cuda else "cpu")
    batches = [make_batch(batch, s.train_size, s.device, s.seed + k) for k in range(2)]
    timer = StepTimer(s.device)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                        max_steps=s.train_steps, gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    loader = torch.utils.data.DataLoader(Pool(batches, s.train_steps), batch_size=None, num_workers=0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(s.device)
    trainer.fit(module, loader)
    peak = torch.cuda.max_memory_allocated(s.device) / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return timer, peak


def run(s: GpuSettings) -> dict[str, Any]:
    """Train detr_coco's model; the record described in the module docstring."""
    module, trainer_cfg = build_module(s)
    module.to(s.device).train()
    tried: list[int] = []
    batch = s.train_batch
    if batch is None:
        batch, tried = largest_batch(module, s)
    gflop = step_gflop(module, batch, s)
    try:
        timer, peak = _fit(module, trainer_cfg, batch, s)
    except torch.OutOfMemoryError:  # the optimizer state did not fit beside the searched batch: half of it
        batch //= 2
        module, trainer_cfg = build_module(s)
        timer, peak = _fit(module.to(s.device), trainer_cfg, batch, s)
        gflop /= 2
    skip = max(1, len(timer.times) // 4)
    timed = timer.times[skip:] or timer.times
    first, last = sum(timer.losses[:3]) / 3, sum(timer.losses[-3:]) / 3
    h, w = s.train_size, (s.train_size * 4 // 3) // 16 * 16
    return {"workload": "gpu_train_detr_coco", "config": "configs/detr_coco.yaml", "batch": batch,
            "batch_sizes_tried": tried, "image_shape": [3, h, w], "steps": len(timer.times),
            "timed_steps": len(timed), "step_s": sum(timed) / len(timed),
            "images_per_s": batch * len(timed) / sum(timed), "peak_memory_mib": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if torch.device(s.device).type == "cuda" else "peak RSS",
            "losses": [round(x, 4) for x in timer.losses], "loss_first3": first, "loss_last3": last,
            "loss_fell": bool(last < first), "loss_finite": all(map(lambda x: x == x and abs(x) != float("inf"),
                                                                    timer.losses)),
            "gflop": gflop, "vitkit_s": sum(timed) / len(timed),
            "params": sum(p.numel() for p in module.parameters())}
