"""The GPU check's peer comparisons, each on the same batch and in the same run (issue 18).

Models come from the CPU benchmarks' builders (:mod:`benchmarks.detr`, :mod:`benchmarks.vit`,
:mod:`benchmarks.caption`), all with random weights; times are medians of interleaved, cuda-synchronised
repetitions (:func:`benchmarks.common.time_interleaved` over :func:`benchmarks.common.synchronized`):

- ``gpu_detr_train``: DETR-R50 training step (forward, matching, losses with 5 auxiliary layers, backward, fused
  AdamW) under bf16 autocast on both sides, vitkit (``SetCriterion``) against Hugging Face
  ``DetrForObjectDetection`` (its own loss with ``labels``); batch ``detr_batch`` x 3 x ``detr_size``^2.
- ``gpu_detr_infer``: DETR-R50 inference on the same batch: vitkit with its inference lever
  (``apply_precision(model, "bf16")``: BatchNorm folded, bf16 weights, channels_last) against the peer under bf16
  autocast (``inference_mode`` both).
- ``gpu_vit_forward_bf16``: ViT-B/16 ``forward_features`` at batch ``vit_batch`` x 224^2, both bf16 weights and
  input (equal dtype), vitkit's ``ViTEncoder.from_timm`` of the timm model (same weights).
- ``gpu_caption_{greedy,beam3}``: caption generation, ``caption_batch`` images, exactly ``tokens`` new tokens, both
  bf16 weights (the CPU benchmark's architectures, :mod:`benchmarks.caption`).
- ``*_compiled``: the same with ``torch.compile`` on both sides (the models' ``forward``; for captions the image
  encoders and the text decoders, ``dynamic=True``); the compile time (first call) is recorded. A compile variant
  that fails records its error instead of stopping the check.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks import caption, detr, vit
from benchmarks.common import count_flops, record, synchronized, time_interleaved
from vitkit.core import ViTEncoder
from vitkit.detection import HungarianMatcher, SetCriterion
from vitkit.kernels.precision import apply_precision
from vitkit.training.optim import adamw


@dataclass
class GpuSettings:
    """Sizes and switches of the GPU check (:func:`tiny` gives the CPU dry run's)."""

    device: str = "cuda"
    tiny: bool = False
    reps: int = 5
    warmup: int = 2
    seed: int = 0
    compile: bool = True
    train_steps: int = 30
    train_size: int = 800
    train_batch: int | None = None  # None: the largest power of two up to max_batch that fits
    max_batch: int = 64
    detr_batch: int = 4
    detr_size: int = 800
    vit_batch: int = 64
    caption_batch: int = 32
    tokens: int = 20
    deadline: float = float("inf")  # time.monotonic() after which compile variants are skipped

    @staticmethod
    def tiny_settings(device: str = "cpu", **kw: Any) -> GpuSettings:
        return GpuSettings(device=device, tiny=True, reps=1, warmup=1, train_steps=4, train_size=64, max_batch=2,
                           detr_batch=1, detr_size=32, vit_batch=2, caption_batch=2, tokens=3, **kw)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def timed(fns: dict[str, Callable[[], Any]], s: GpuSettings) -> dict[str, list[float]]:
    return time_interleaved(synchronized(fns, s.device), s.reps, s.warmup)


def _compile_call(fn: Callable[[], Any], device: str) -> tuple[float | None, str | None]:
    """Run ``fn`` once (the compile); its wall time, or the error text."""
    try:
        t0 = time.perf_counter()
        synchronized({"f": fn}, device)["f"]()
        return time.perf_counter() - t0, None
    except Exception as e:  # a compile failure is a finding, not the end of the check
        return None, f"{type(e).__name__}: {str(e)[:500]}"


def _with_compiled(name: str, make: Callable[[], dict[str, Callable[[], Any]]], s: GpuSettings,
                   fns: dict[str, Callable[[], Any]], notes: dict[str, Any], min_left: float = 90.0) -> None:
    """Add ``{vitkit,peer}_compiled`` callables from ``make()`` to ``fns`` if compiling is on, time allows and the
    first (compiling) call of each works; compile seconds and errors go to ``notes``."""
    if not s.compile:
        return
    if s.time_left() < min_left:
        notes[f"{name}_compile_skipped"] = f"less than {min_left:.0f} s of the time budget left"
        return
    for key, fn in make().items():
        seconds, err = _compile_call(fn, s.device)
        notes[f"{key}_compile_s"] = seconds
        if err:
            notes[f"{key}_compile_error"] = err
        else:
            fns[key] = fn


def _records(workload: str, times: dict[str, list[float]], peer: str, notes: dict[str, Any], **extra: Any
             ) -> list[dict[str, Any]]:
    out = [record(workload, times["vitkit"], peer, times["peer"], **notes, **extra)]
    if "vitkit_compiled" in times or "peer_compiled" in times:
        out.append(record(f"{workload}_compiled", times.get("vitkit_compiled"), f"{peer}, torch.compile",
                          times.get("peer_compiled"), compile_adds_vitkit=_ratio(times, "vitkit"),
                          compile_adds_peer=_ratio(times, "peer"), **extra))
    return out


def _ratio(times: dict[str, list[float]], side: str) -> float | None:
    """eager median / compiled median (> 1: compile made it faster)."""
    if not times.get(f"{side}_compiled"):
        return None
    return sorted(times[side])[len(times[side]) // 2] / sorted(times[f"{side}_compiled"])[len(times[side]) // 2]


def _detr_models(s: GpuSettings) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    backbone, depth = ("resnet18", 2) if s.tiny else ("resnet50", 6)
    torch.manual_seed(s.seed)
    hf = detr.build_hf_detr("gpu_detr", backbone, depth).to(s.device)
    torch.manual_seed(s.seed)
    vk = detr.build_vitkit_detr(backbone, depth).to(s.device)
    size = {"backbone": backbone, "depth": depth, "batch_shape": [s.detr_batch, 3, s.detr_size, s.detr_size]}
    return vk, hf, size


def _detr_batch(s: GpuSettings) -> tuple[torch.Tensor, torch.Tensor, list[dict], list[dict]]:
    g = torch.Generator().manual_seed(s.seed)
    images = torch.randn(s.detr_batch, 3, s.detr_size, s.detr_size, generator=g).to(s.device)
    pixel_mask = torch.ones(s.detr_batch, s.detr_size, s.detr_size, dtype=torch.long, device=s.device)
    targets = [{k: v.to(s.device) for k, v in t.items()} for t in detr.random_targets(s.detr_batch, s.seed)]
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    return images, pixel_mask, targets, hf_labels


def detr_train(s: GpuSettings) -> list[dict[str, Any]]:
    """``gpu_detr_train`` (+ ``_compiled``): one training step each, bf16 autocast both sides."""
    vk, hf, size = _detr_models(s)
    vk.train(), hf.train()
    images, pixel_mask, targets, hf_labels = _detr_batch(s)
    criterion = SetCriterion(HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
                             eos_coef=0.1).bind(detr.NUM_CLASSES, sigmoid_head=False)
    dev = torch.device(s.device).type

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer, peer: bool) -> Callable[[], float]:
        def call() -> float:
            with torch.autocast(dev, dtype=torch.bfloat16):
                if peer:
                    loss = model(pixel_values=images, pixel_mask=pixel_mask, labels=hf_labels).loss
                else:
                    loss = criterion(model(images), targets)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        return call

    def opt(m: torch.nn.Module) -> torch.optim.Optimizer:
        return adamw([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    fns = {"vitkit": step(vk, opt(vk), False), "peer": step(hf, opt(hf), True)}
    scratch = copy.deepcopy(vk)
    gflop = count_flops(step(scratch, opt(scratch), False)) / 1e9
    del scratch
    notes: dict[str, Any] = {}

    def make() -> dict[str, Callable[[], Any]]:
        cvk, chf = copy.deepcopy(vk), copy.deepcopy(hf)
        return {"vitkit_compiled": step(torch.compile(cvk), opt(cvk), False),
                "peer_compiled": step(torch.compile(chf), opt(chf), True)}

    _with_compiled("gpu_detr_train", make, s, fns, notes)
    times = timed(fns, s)
    return _records("gpu_detr_train", times, "transformers.DetrForObjectDetection (bf16 autocast, its loss)", notes,
                    dtype="bf16 autocast (fp32 weights)", peer_dtype="bf16 autocast", gflop=gflop,
                    targets_per_image=[len(t["labels"]) for t in targets], **size)


def detr_infer(s: GpuSettings) -> list[dict[str, Any]]:
    """``gpu_detr_infer`` (+ ``_compiled``): vitkit bf16 weights (BN folded) vs the peer under bf16 autocast."""
    vk, hf, size = _detr_models(s)
    hf.eval()
    vk16 = copy.deepcopy(vk.eval())
    apply_precision(vk16, "bf16")
    images, pixel_mask, _, _ = _detr_batch(s)
    dev = torch.device(s.device).type

    def mine(model: torch.nn.Module) -> Callable[[], Any]:
        return torch.inference_mode()(lambda: model(images.to(torch.bfloat16)))

    def peer(model: torch.nn.Module) -> Callable[[], Any]:
        @torch.inference_mode()
        def call() -> Any:
            with torch.autocast(dev, dtype=torch.bfloat16):
                return model(pixel_values=images, pixel_mask=pixel_mask)

        return call

    fns = {"vitkit": mine(vk16), "peer": peer(hf)}
    gflop = count_flops(torch.inference_mode()(lambda: vk(images))) / 1e9
    notes: dict[str, Any] = {}
    _with_compiled("gpu_detr_infer", lambda: {"vitkit_compiled": mine(torch.compile(vk16)),
                                              "peer_compiled": peer(torch.compile(hf))}, s, fns, notes)
    times = timed(fns, s)
    return _records("gpu_detr_infer", times, "transformers.DetrForObjectDetection (bf16 autocast)", notes,
                    dtype="bf16 weights, BN folded", peer_dtype="bf16 autocast", gflop=gflop, **size)


def vit_forward(s: GpuSettings) -> list[dict[str, Any]]:
    """``gpu_vit_forward_bf16`` (+ ``_compiled``): ViT-B/16 forward_features, bf16 both, same weights."""
    depth, size = (2, 64) if s.tiny else (None, 224)
    torch.manual_seed(s.seed)
    peer32 = vit._timm_vit("gpu_vit_forward", depth, img_size=size).eval()
    vk = ViTEncoder.from_timm(peer32).eval().to(s.device)
    peer = peer32.to(s.device).to(torch.bfloat16)
    apply_precision(vk, "bf16")
    x = torch.randn(s.vit_batch, 3, size, size, generator=torch.Generator().manual_seed(s.seed))
    x = x.to(s.device, torch.bfloat16)

    def fwd(model: torch.nn.Module) -> Callable[[], Any]:
        return torch.inference_mode()(lambda: model.forward_features(x))

    fns = {"vitkit": fwd(vk), "peer": fwd(peer)}
    diff = float((fns["vitkit"]().float() - fns["peer"]().float()).abs().max())
    gflop = count_flops(fns["vitkit"]) / 1e9
    notes: dict[str, Any] = {}

    class Features(torch.nn.Module):  # torch.compile of forward_features, the timed call
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.m.forward_features(t)

    def make() -> dict[str, Callable[[], Any]]:
        cv, cp = torch.compile(Features(vk)), torch.compile(Features(peer))
        return {"vitkit_compiled": torch.inference_mode()(lambda: cv(x)),
                "peer_compiled": torch.inference_mode()(lambda: cp(x))}

    _with_compiled("gpu_vit_forward", make, s, fns, notes)
    times = timed(fns, s)
    return _records("gpu_vit_forward_bf16", times, "timm vit_base_patch16_224 (bf16)", notes, dtype="bf16",
                    peer_dtype="bf16", batch_shape=[s.vit_batch, 3, size, size], max_abs_output_diff=diff,
                    same_weights=True, gflop=gflop)


def _compile_parts(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    """A copy of ``model`` whose named children run compiled (``nn.Module.compile``, ``dynamic=True``)."""
    model = copy.deepcopy(model)
    for name in names:
        getattr(model, name).compile(dynamic=True)
    return model


def captions(s: GpuSettings) -> list[dict[str, Any]]:
    """``gpu_caption_{greedy,beam3}`` (+ ``_compiled``): generate exactly ``tokens`` new tokens, bf16 both."""
    enc_depth, dec_depth, size = (2, 2, 64) if s.tiny else (12, 6, 224)
    torch.manual_seed(s.seed)
    peer = caption.build_hf_captioner(size, enc_depth, dec_depth).eval().to(s.device, torch.bfloat16)
    torch.manual_seed(s.seed)
    vk = caption.build_vitkit_captioner(enc_depth, dec_depth).eval().to(s.device)
    apply_precision(vk, "bf16")
    x = torch.randn(s.caption_batch, 3, size, size, generator=torch.Generator().manual_seed(s.seed))
    x = x.to(s.device, torch.bfloat16)
    n, out = s.tokens, []
    for beams, tag in ((1, "greedy"), (3, "beam3")):
        def mine(model: torch.nn.Module, beams: int = beams) -> Callable[[], Any]:
            method = "greedy" if beams == 1 else "beam"
            return torch.inference_mode()(
                lambda: model.generate(x, method=method, num_beams=beams, max_length=n + 1, min_length=n)[0])

        def theirs(model: torch.nn.Module, beams: int = beams) -> Callable[[], Any]:
            return torch.inference_mode()(lambda: model.generate(
                pixel_values=x, max_new_tokens=n, min_new_tokens=n, num_beams=beams, do_sample=False,
                length_penalty=1.0, early_stopping=False))

        fns = {"vitkit": mine(vk), "peer": theirs(peer)}
        new_tokens = {k: int(fn().shape[1]) - 1 for k, fn in fns.items()}
        notes: dict[str, Any] = {}
        _with_compiled(f"gpu_caption_{tag}", lambda mine=mine, theirs=theirs: {
            "vitkit_compiled": mine(_compile_parts(vk, ("encoder", "decoder"))),
            "peer_compiled": theirs(_compile_parts(peer, ("encoder", "decoder")))}, s, fns, notes)
        times = timed(fns, s)
        out += _records(f"gpu_caption_{tag}", times, f"transformers.VisionEncoderDecoderModel generate (bf16, {tag})",
                        notes, dtype="bf16 weights", peer_dtype="bf16 weights", new_tokens=new_tokens,
                        batch_shape=[s.caption_batch, 3, size, size], num_beams=beams)
    return out


PEERS: dict[str, Callable[[GpuSettings], list[dict[str, Any]]]] = {
    "detr_train": detr_train, "detr_infer": detr_infer, "vit_forward": vit_forward, "caption": captions}
