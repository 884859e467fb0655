"""Set-prediction losses for DETR-style detectors: Hungarian matching, then class + L1 + GIoU losses.

Differences from the reference (DETR's SetCriterion):

- One module serves three classification losses (the key is ``loss_ce`` for all). The head decides
  (``sigmoid_head``, the detector's own flag): a softmax head trains with cross-entropy, a sigmoid head with
  the loss named by ``sigmoid_loss``:
  - ``"ce"`` (softmax heads): softmax cross-entropy over C+1 classes, no-object weighted by ``eos_coef``;
    mean weighted by the class weights (``F.cross_entropy`` with ``weight``), as DETR does.
  - ``"focal"`` (sigmoid heads, the default): ``torchvision.ops.sigmoid_focal_loss`` on one-hot targets over
    C classes (no no-object slot), summed over all (B, Q, C) elements and divided by ``num_boxes``. This is
    exactly Deformable DETR's ``loss.mean(1).sum() / num_boxes * Q``.
  - ``"varifocal"`` (sigmoid heads; VFL, IoU-aware classification as in RT-DETR): the matched class's target
    is the IoU (detached) of the predicted box with its GT, every other entry 0; BCE-with-logits weighted by
    ``alpha * sigmoid(x)^gamma`` on entries that are not the matched class and by the IoU target on those that
    are; reduced like ``"focal"`` (sum / ``num_boxes``). RT-DETR uses ``focal_alpha=0.75`` for this loss.
- All loss math runs in float32 with autocast off, so bf16 training stays finite.
- Hybrid matching: an optional ``one2many`` output branch is matched with every target repeated
  ``one2many_k`` times; its losses are normalised by ``num_boxes * one2many_k`` (the repeated target count, as
  H-DETR does).
- Returned values are already weighted; ``loss`` is their sum. Diagnostics (``diagnostic_keys``) are detached
  and not part of ``loss``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from vitkit.detection.box_ops import cxcywh_to_xyxy, paired_box_iou
from vitkit.detection.matcher import FOCAL_GAMMA, HungarianMatcher
from vitkit.utils.distributed import is_distributed, world_size

SIGMOID_LOSSES = ("focal", "varifocal")
DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def average_num_boxes(targets: list[dict], device: torch.device) -> Tensor:
    """Targets in the batch, averaged over DDP ranks when torch.distributed is initialised, clamped to >= 1.

    Args:
        targets: B dicts with ``labels`` (n,).
        device: where the count lives (the collective's device).

    Returns:
        () float32 tensor.
    """
    n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if is_distributed():
        dist.all_reduce(n)
        n = n / world_size()
    return n.clamp(min=1.0)


class SetCriterion(nn.Module):
    """DETR losses over the final layer, every auxiliary layer and an optional one-to-many branch.

    Args:
        num_classes: C, object classes (no-object excluded). CE heads emit C+1 logits, sigmoid heads C.
        matcher: the assignment used for every layer and branch.
        weight_dict: weights for ``loss_ce``, ``loss_bbox``, ``loss_giou`` (missing keys take the defaults
            1, 5, 2; unknown keys are an error).
        eos_coef: CE weight of the no-object class.
        sigmoid_head: the detector's head kind (``DETR.sigmoid_head``): True = C sigmoid logits, trained with
            ``sigmoid_loss``; False = C+1 softmax logits (last = no-object), trained with cross-entropy.
        sigmoid_loss: the classification loss of a sigmoid head, "focal" or "varifocal"; unused by softmax heads.
        focal_alpha: alpha of the focal / varifocal loss (gamma is :data:`FOCAL_GAMMA`).
        one2many_k: times each target is repeated when matching the ``one2many`` branch.
        enc_one2many_k: times each target is repeated when matching the two-stage encoder proposals
            (``enc_outputs``); 1 is one-to-one. Every token is a proposal, so repeating gives the encoder
            several positives per object, as dense detectors have.
    """

    diagnostic_keys = frozenset({"diag_class_error", "diag_cardinality_error"})

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float] | None = None,
        eos_coef: float = 0.1,
        sigmoid_head: bool = False,
        sigmoid_loss: str = "focal",
        focal_alpha: float = 0.25,
        one2many_k: int = 6,
        enc_one2many_k: int = 1,
    ) -> None:
        super().__init__()
        if sigmoid_loss not in SIGMOID_LOSSES:
            raise ValueError(f"sigmoid_loss must be one of {SIGMOID_LOSSES}, got {sigmoid_loss!r}")
        unknown = set(weight_dict or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown weight_dict keys {sorted(unknown)}; expected {sorted(DEFAULT_WEIGHTS)}")
        self.num_classes, self.matcher = num_classes, matcher
        self.loss_type = sigmoid_loss if sigmoid_head else "ce"  # "ce", "focal" or "varifocal"
        self.weight_dict = {**DEFAULT_WEIGHTS, **(weight_dict or {})}
        self.eos_coef, self.focal_alpha = eos_coef, focal_alpha
        self.one2many_k, self.enc_one2many_k = one2many_k, enc_one2many_k
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def _class_loss(self, logits: Tensor, idx: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor | None, nb: Tensor):
        """(B, Q, C[+1]) logits, matched (batch, query) idx and (M,) labels/IoUs -> () loss."""
        if self.loss_type == "ce":
            target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target[idx] = labels
            return F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight.to(logits))  # over (B, C+1, Q)
        onehot = torch.zeros_like(logits)  # (B, Q, C)
        onehot[idx[0], idx[1], labels] = 1.0
        if self.loss_type == "focal":
            return sigmoid_focal_loss(logits, onehot, self.focal_alpha, FOCAL_GAMMA, reduction="sum") / nb
        score = torch.zeros_like(logits)  # IoU-valued targets, (B, Q, C)
        score[idx[0], idx[1], labels] = ious
        weight = self.focal_alpha * logits.sigmoid().detach() ** FOCAL_GAMMA * (1 - onehot) + score
        return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum") / nb

    def _layer_losses(self, out: dict, targets: list[dict], indices: list, nb: Tensor, diag: bool) -> dict:
        """Unweighted losses (and diagnostics if ``diag``) of one layer's outputs under a given matching."""
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()  # (B, Q, C[+1]), (B, Q, 4)
        want = self.num_classes + (self.loss_type == "ce")
        if logits.shape[-1] != want:
            head = "softmax" if self.loss_type == "ce" else "sigmoid"
            raise ValueError(f"a {head} head ({self.loss_type!r} loss) with {self.num_classes} classes expects {want} "
                             f"logits, got {logits.shape[-1]} (softmax heads have a no-object slot, sigmoid heads "
                             "do not)")
        dev = logits.device
        batch = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)]).to(dev)  # (M,)
        src = torch.cat([s for s, _ in indices]).to(dev)  # (M,)
        pairs = list(zip(targets, indices, strict=True))
        labels = torch.cat([t["labels"][j] for t, (_, j) in pairs]).to(dev)  # (M,)
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in pairs]).to(boxes)  # (M, 4)
        src_boxes = boxes[batch, src]  # (M, 4); empty M keeps pred_boxes in the graph with zero grad
        src_xyxy, tgt_xyxy = cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes)
        ious = paired_box_iou(src_xyxy.detach(), tgt_xyxy) if self.loss_type == "varifocal" else None
        losses = {
            "loss_ce": self._class_loss(logits, (batch, src), labels, ious, nb),
            "loss_bbox": F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / nb,
            "loss_giou": generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="sum") / nb,
        }
        if diag:
            with torch.no_grad():
                pred = logits[batch, src].argmax(-1)
                err = 100.0 * (pred != labels).float().mean() if len(labels) else logits.new_zeros(())
                if self.loss_type == "ce":
                    n_pred = (logits.argmax(-1) != self.num_classes).sum(1)  # (B,)
                else:
                    n_pred = (logits.sigmoid().amax(-1) > 0.5).sum(1)  # (B,)
                n_tgt = torch.tensor([len(t["labels"]) for t in targets], device=dev)
                losses["diag_class_error"] = err
                losses["diag_cardinality_error"] = (n_pred - n_tgt).abs().float().mean()
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """Compute the losses.

        Args:
            outputs: ``pred_logits`` (B, Q, C+1) softmax heads / (B, Q, C) sigmoid heads; ``pred_boxes``
                (B, Q, 4) normalised cxcywh; optional ``aux_outputs`` (list of dicts with the same keys, earlier
                decoder layers), ``enc_outputs`` (two-stage encoder proposals, matched one-to-one like a layer),
                ``one2many`` (a dict with the same structure, hybrid-matching queries) and ``dn_outputs``
                (denoising queries with their ``dn_meta``: positives are assigned, not matched).
            targets: B dicts with ``labels`` (n,) int64 in [0, C) and ``boxes`` (n, 4) normalised cxcywh.

        Returns:
            Weighted () tensors: ``loss_ce``/``loss_bbox``/``loss_giou`` (final layer), ``{key}_{i}`` (aux layer
            i), ``{key}_enc`` (encoder proposals), ``{key}_o2m`` and ``{key}_o2m_{i}`` (one-to-many branch),
            ``{key}_dn`` and ``{key}_dn_{i}`` (denoising), ``loss`` (their sum); and the
            unweighted, detached final-layer diagnostics in ``diagnostic_keys``: ``diag_class_error`` (top-1
            error in % over matched queries) and ``diag_cardinality_error`` (mean |#predicted objects - #targets|
            per image; CE: argmax is not no-object, sigmoid: max score > 0.5).
        """
        device = outputs["pred_logits"].device
        nb = average_num_boxes(targets, device)
        branches = [("", outputs, 1)]
        if "one2many" in outputs and self.one2many_k > 0:
            branches.append(("_o2m", outputs["one2many"], self.one2many_k))
        result: dict[str, Tensor] = {}
        with torch.autocast(device.type, enabled=False):
            for tag, branch, rep in branches:
                aux = branch.get("aux_outputs", [])
                layers = [(tag, branch, rep)] + [(f"{tag}_{i}", a, rep) for i, a in enumerate(aux)]
                if "enc_outputs" in branch:
                    layers.append((f"{tag}_enc", branch["enc_outputs"], self.enc_one2many_k))
                for suffix, out, k in layers:
                    indices = self.matcher(out, targets, repeat=k)
                    losses = self._layer_losses(out, targets, indices, nb * k, diag=suffix == "")
                    for key, value in losses.items():
                        if key in self.diagnostic_keys:
                            result[key] = value
                        else:
                            result[key + suffix] = value * self.weight_dict[key]
            if "dn_outputs" in outputs:
                dn = outputs["dn_outputs"]
                meta = dn["dn_meta"]
                indices = meta.positive_indices([len(t["labels"]) for t in targets])
                layers = [("_dn", dn)] + [(f"_dn_{i}", a) for i, a in enumerate(dn.get("aux_outputs", []))]
                for suffix, out in layers:
                    losses = self._layer_losses(out, targets, indices, nb * meta.num_groups, diag=False)
                    for key, value in losses.items():
                        result[key + suffix] = value * self.weight_dict[key]
        result["loss"] = sum(v for key, v in result.items() if key not in self.diagnostic_keys)
        return result
