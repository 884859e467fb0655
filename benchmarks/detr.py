"""(a) DETR-R50 inference and (b) a DETR-R50 training step: vitkit against Hugging Face ``DetrForObjectDetection``.

Both sides have the classic DETR-R50 architecture with random weights (nothing is downloaded): a timm
ResNet-50 with frozen BatchNorm, 6 + 6 post-norm layers, d=256, 8 heads, FFN 2048, 100 queries, 92 logits
(91 classes + no-object), sine positions added to q and k in every layer. vitkit's model is built as in
``configs/detr_r50_coco.yaml``; Hugging Face's from a ``DetrConfig`` with a timm ``resnet50`` backbone and
``use_pretrained_backbone=False``. Parameter counts of both are recorded.

(a) inference, batch 2 x 3 x 512 x 512 (``--quick``: 1 x 64 x 64, ResNet-18, 2 + 2 layers):
  - ``detr_infer``: vitkit with its inference speed levers, as ``vitkit.load(..., precision="bf16")`` applies
    them (:func:`vitkit.kernels.precision.apply_precision`: frozen BatchNorm folded into the convs, weights and input in
    bf16, channels_last conv backbone; ``torch.inference_mode``) against the peer in fp32 eager
    (``inference_mode``, its default attention implementation, recorded);
  - ``detr_infer_autocast``: vitkit fp32 weights under bf16 autocast, channels_last, same peer times;
  - ``detr_infer_fp32``: vitkit fp32 (channels_last), for reference, same peer times.
(b) training step, same batch: forward, Hungarian matching, losses (final + 5 auxiliary layers on both
sides), backward, AdamW step (lr 1e-4, wd 1e-4, no clipping). Both sides use torch's fused AdamW: vitkit's
training modules build it (:func:`vitkit.training.optim.adamw`), and it is the Hugging Face Trainer's default
optimizer (``adamw_torch_fused``) with this torch:
  - ``detr_train``: vitkit (``SetCriterion`` + ``HungarianMatcher``, CE loss with eos_coef 0.1) under bf16
    autocast with fp32 weights and channels_last, against the peer in fp32 with ``labels`` (its own loss);
  - ``detr_train_fp32``: vitkit fp32, for reference, same peer times.
  The stem and layer1 are frozen on both sides (DETR's recipe; this transformers version does not freeze them
  for a timm backbone, so the benchmark does), and both sides get the same random targets.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from benchmarks.common import Settings, count_flops, fault_fields, maybe_profile, record, require, time_interleaved
from vitkit.kernels.precision import apply_precision

WORKLOAD_INFER = "detr_infer"
WORKLOAD_TRAIN = "detr_train"
NUM_CLASSES = 91


def _sizes(settings: Settings) -> dict[str, Any]:
    if settings.quick:
        return {"batch": 1, "size": 64, "backbone": "resnet18", "depth": 2}
    return {"batch": 2, "size": 512, "backbone": "resnet50", "depth": 6}


def build_vitkit_detr(backbone: str = "resnet50", depth: int = 6, channels_last: bool = True):
    """vitkit's DETR-R50 as in configs/detr_r50_coco.yaml (random weights)."""
    from vitkit.core import TransformerDecoder, ViTEncoder
    from vitkit.detection import DETR
    from vitkit.layers import BackbonePatchEmbed

    pe = BackbonePatchEmbed(backbone, embed_dim=256, pretrained=False, frozen_bn=True, freeze_at=2,
                            channels_last=channels_last)
    enc = ViTEncoder(pe, embed_dim=256, depth=depth, num_heads=8, mlp_dim=2048, dropout=0.1, act="relu",
                     norm_eps=1e-5, pos_embed="sine", pos_mode="qk", class_token=False, norm_first=False,
                     final_norm=False)
    dec = TransformerDecoder(dim=256, depth=depth, num_heads=8, mlp_dim=2048, dropout=0.1, act="relu",
                             norm_first=False)
    model = DETR(enc, dec, num_classes=NUM_CLASSES, num_queries=100)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_hf_detr(workload: str, backbone: str = "resnet50", depth: int = 6):
    """Hugging Face DetrForObjectDetection, random init, same architecture; stem + layer1 frozen."""
    transformers = require("transformers", workload)
    require("timm", workload)
    cfg = transformers.DetrConfig(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False,
                                  num_labels=NUM_CLASSES, num_queries=100, d_model=256, encoder_layers=depth,
                                  decoder_layers=depth, encoder_attention_heads=8, decoder_attention_heads=8,
                                  encoder_ffn_dim=2048, decoder_ffn_dim=2048, activation_function="relu",
                                  dropout=0.1, auxiliary_loss=True, position_embedding_type="sine")
    model = transformers.DetrForObjectDetection(cfg)
    for name, p in model.model.backbone.named_parameters():
        if not any(s in name for s in ("layer2", "layer3", "layer4")):
            p.requires_grad_(False)  # DETR's recipe: stem + layer1 frozen (as vitkit's freeze_at=2)
    return model


def _n_params(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def random_targets(batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """B random targets (5..12 boxes each), normalised cxcywh inside the image, labels in [0, 91)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for i in range(batch):
        n = 5 + (7 * i) % 8
        wh = 0.05 + 0.4 * torch.rand(n, 2, generator=g)
        c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
        out.append({"boxes": torch.cat((c, wh), dim=1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g)})
    return out


def run_inference(settings: Settings) -> list[dict[str, Any]]:
    s = _sizes(settings)
    torch.manual_seed(settings.seed)
    hf = build_hf_detr(WORKLOAD_INFER, s["backbone"], s["depth"]).eval()
    torch.manual_seed(settings.seed)
    vk32 = build_vitkit_detr(s["backbone"], s["depth"]).eval()
    vk16 = copy.deepcopy(vk32)
    apply_precision(vk16, "bf16")
    g = torch.Generator().manual_seed(settings.seed)
    images = torch.randn(s["batch"], 3, s["size"], s["size"], generator=g)
    pixel_mask = torch.ones(s["batch"], s["size"], s["size"], dtype=torch.long)

    @torch.inference_mode()
    def vitkit_bf16():
        return vk16(images.to(torch.bfloat16))

    @torch.inference_mode()
    def vitkit_autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return vk32(images)

    @torch.inference_mode()
    def vitkit_fp32():
        return vk32(images)

    @torch.inference_mode()
    def peer():
        return hf(pixel_values=images, pixel_mask=pixel_mask)

    fns = {"vitkit_bf16": vitkit_bf16, "vitkit_autocast": vitkit_autocast, "vitkit_fp32": vitkit_fp32, "peer": peer}
    compile_s = None
    if settings.compile:  # the option: inductor with frozen weights (constant-folded, prepacked oneDNN kernels)
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(vk16)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(images.to(torch.bfloat16))
        compile_s = time.perf_counter() - t0
        fns["vitkit_compiled"] = torch.inference_mode()(lambda: compiled(images.to(torch.bfloat16)))
    ref = vitkit_fp32()
    box_diff = {k: float((fns[k]()["pred_boxes"].float() - ref["pred_boxes"]).abs().max())
                for k in ("vitkit_bf16", "vitkit_autocast")}
    gflop = count_flops(vitkit_fp32) / 1e9
    faults: dict[str, list[int]] = {}
    times = time_interleaved(fns, settings.reps, settings.warmup, faults)
    maybe_profile(settings, WORKLOAD_INFER, fns)

    common = {"batch_shape": [s["batch"], 3, s["size"], s["size"]], "threads": settings.threads,
              "peer_dtype": "fp32", "peer_attn_implementation": hf.config._attn_implementation,
              "vitkit_params": _n_params(vk32), "peer_params": _n_params(hf), "gflop": gflop}
    peer_name = "transformers.DetrForObjectDetection (fp32 eager)"
    out = []
    rec = record(WORKLOAD_INFER, times["vitkit_bf16"], peer_name, times["peer"], dtype="bf16 weights, BN folded",
                 channels_last=True, max_abs_box_diff_vs_fp32=box_diff["vitkit_bf16"],
                 **fault_fields(faults, "vitkit_bf16"), **common)
    out.append(rec)
    rec = record(f"{WORKLOAD_INFER}_autocast", times["vitkit_autocast"], peer_name, times["peer"],
                 dtype="bf16 autocast (fp32 weights)", channels_last=True,
                 max_abs_box_diff_vs_fp32=box_diff["vitkit_autocast"],
                 **fault_fields(faults, "vitkit_autocast"), **common)
    out.append(rec)
    if compile_s is not None:
        out.append(record(f"{WORKLOAD_INFER}_compiled", times["vitkit_compiled"], peer_name, times["peer"],
                          dtype="bf16 weights, BN folded, torch.compile (freezing)", channels_last=True,
                          compile_and_first_call_s=compile_s, note="option: torch.compile",
                          **fault_fields(faults, "vitkit_compiled"), **common))
    out.append(record(f"{WORKLOAD_INFER}_fp32", times["vitkit_fp32"], peer_name, times["peer"], dtype="fp32",
                      channels_last=True, note="reference: vitkit fp32",
                      **fault_fields(faults, "vitkit_fp32"), **common))
    return out


def run_training(settings: Settings) -> list[dict[str, Any]]:
    s = _sizes(settings)
    from vitkit.detection import HungarianMatcher, SetCriterion
    from vitkit.training.optim import adamw as make_adamw

    torch.manual_seed(settings.seed)
    hf = build_hf_detr(WORKLOAD_TRAIN, s["backbone"], s["depth"]).train()
    torch.manual_seed(settings.seed)
    vk_mixed = build_vitkit_detr(s["backbone"], s["depth"]).train()
    vk_fp32 = copy.deepcopy(vk_mixed)
    criterion = SetCriterion(HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
                             eos_coef=0.1).bind(NUM_CLASSES, sigmoid_head=False)  # a softmax head: cross-entropy
    g = torch.Generator().manual_seed(settings.seed)
    images = torch.randn(s["batch"], 3, s["size"], s["size"], generator=g)
    pixel_mask = torch.ones(s["batch"], s["size"], s["size"], dtype=torch.long)
    targets = random_targets(s["batch"], settings.seed)
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]

    def adamw(model):
        return make_adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    opt_mixed, opt_fp32, opt_hf = adamw(vk_mixed), adamw(vk_fp32), adamw(hf)
    last_loss: dict[str, float] = {}

    def vitkit_step(model, opt, name, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = criterion(model(images), targets)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        last_loss[name] = float(losses["loss"].detach())

    def peer():
        loss = hf(pixel_values=images, pixel_mask=pixel_mask, labels=hf_labels).loss
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()
        last_loss["peer"] = float(loss.detach())

    fns = {"vitkit_bf16_mixed": lambda: vitkit_step(vk_mixed, opt_mixed, "vitkit_bf16_mixed", True),
           "vitkit_fp32": lambda: vitkit_step(vk_fp32, opt_fp32, "vitkit_fp32", False),
           "peer": peer}
    def counted_step():  # on a throwaway copy: the counted step must not move the timed models' weights
        scratch = copy.deepcopy(vk_mixed)
        vitkit_step(scratch, adamw(scratch), "scratch", False)

    gflop = count_flops(counted_step) / 1e9
    faults: dict[str, list[int]] = {}
    times = time_interleaved(fns, settings.reps, settings.warmup, faults)
    maybe_profile(settings, WORKLOAD_TRAIN, fns)

    common = {"batch_shape": [s["batch"], 3, s["size"], s["size"]], "threads": settings.threads,
              "peer_dtype": "fp32", "peer_attn_implementation": hf.config._attn_implementation,
              "targets_per_image": [len(t["labels"]) for t in targets],
              "vitkit_trainable_params": _n_params(vk_mixed, trainable=True),
              "peer_trainable_params": _n_params(hf, trainable=True), "gflop": gflop,
              "peer_last_loss": last_loss.get("peer")}
    peer_name = "transformers.DetrForObjectDetection (fp32, labels -> its loss)"
    rec = record(WORKLOAD_TRAIN, times["vitkit_bf16_mixed"], peer_name, times["peer"],
                 dtype="bf16 autocast (fp32 weights)", channels_last=True,
                 vitkit_last_loss=last_loss.get("vitkit_bf16_mixed"),
                 **fault_fields(faults, "vitkit_bf16_mixed"), **common)
    out = [rec]
    out.append(record(f"{WORKLOAD_TRAIN}_fp32", times["vitkit_fp32"], peer_name, times["peer"], dtype="fp32",
                      channels_last=True, vitkit_last_loss=last_loss.get("vitkit_fp32"),
                      note="reference: vitkit fp32", **fault_fields(faults, "vitkit_fp32"), **common))
    return out
