"""Set-prediction losses for DETR-style detectors: Hungarian matching, then class + L1 + GIoU losses.

Differences from DETR's SetCriterion: ``loss_ce`` is softmax CE (no-object weighted by ``eos_coef``) for softmax
heads or the varifocal loss (summed, divided by ``num_boxes``) for sigmoid heads, chosen by :meth:`SetCriterion.bind`;
all loss math runs in float32 with autocast off; an optional ``one2many`` branch is matched with targets repeated
``one2many_k`` times and normalised by ``num_boxes * one2many_k``. Returned losses are already weighted.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from vitkit.detection.box_ops import cxcywh_to_xyxy, paired_box_iou
from vitkit.detection.matcher import FOCAL_GAMMA, HungarianMatcher
from vitkit.utils.distributed import is_distributed, world_size


def average_num_boxes(targets: list[dict], device: torch.device) -> Tensor:
    """Targets in the batch (B dicts with ``labels`` (n,)), averaged over DDP ranks when torch.distributed is
    initialised, clamped to >= 1; a () float32 tensor on ``device``."""
    n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if is_distributed():
        dist.all_reduce(n)
        n = n / world_size()
    return n.clamp(min=1.0)


class SetCriterion(nn.Module):
    """DETR losses over the final layer, every auxiliary layer and an optional one-to-many branch; must be bound
    with :meth:`bind` before use.

    Args:
        matcher: the assignment used for every layer and branch.
        loss_ce, loss_bbox, loss_giou: weights of the classification, L1 and GIoU losses.
        eos_coef: CE weight of the no-object class (softmax heads only).
        focal_alpha: alpha of the varifocal loss and the matcher's focal cost (sigmoid heads only; gamma is
            :data:`FOCAL_GAMMA`).
        one2many_k, enc_one2many_k: times each target is repeated when matching the ``one2many`` branch / the
            two-stage encoder proposals (``enc_outputs``); 1 is one-to-one.
    """

    diagnostic_keys = frozenset({"diag_class_error", "diag_cardinality_error"})

    def __init__(
        self,
        matcher: HungarianMatcher,
        loss_ce: float = 1.0,
        loss_bbox: float = 5.0,
        loss_giou: float = 2.0,
        eos_coef: float = 0.1,
        focal_alpha: float = 0.25,
        one2many_k: int = 6,
        enc_one2many_k: int = 1,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weight_dict = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        self.eos_coef, self.focal_alpha = eos_coef, focal_alpha
        self.one2many_k, self.enc_one2many_k = one2many_k, enc_one2many_k
        self.num_classes: int | None = None  # C, set by bind
        self.loss_type: str | None = None  # "ce" or "varifocal", set by bind

    def bind(self, num_classes: int, sigmoid_head: bool) -> SetCriterion:
        """Fit the losses (and the matcher's class cost) to a detector's head; returns ``self``.

        Args:
            num_classes: C, object classes (no-object excluded).
            sigmoid_head: True = C sigmoid logits (varifocal loss); False = C+1 softmax logits (last = no-object,
                cross-entropy).

        Raises:
            ValueError: naming ``model.criterion``, when it is already bound to another class count or head.
        """
        head = (int(num_classes), "varifocal" if sigmoid_head else "ce")
        if self.num_classes is not None and (self.num_classes, self.loss_type) != head:
            raise ValueError(f"model.criterion: this SetCriterion is bound to a {self.loss_type!r} head with "
                             f"{self.num_classes} classes and cannot serve a {head[1]!r} head with {head[0]} "
                             "classes; give each module its own criterion")
        self.num_classes, self.loss_type = head
        self.matcher.bind(sigmoid=bool(sigmoid_head), focal_alpha=self.focal_alpha)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)
        return self

    def _class_loss(self, logits: Tensor, idx: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor | None, nb: Tensor):
        """(B, Q, C[+1]) logits, matched (batch, query) idx and (M,) labels/IoUs -> () loss."""
        if self.loss_type == "ce":
            target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target[idx] = labels
            return F.cross_entropy(logits.transpose(1, 2), target, self.empty_weight.to(logits))  # over (B, C+1, Q)
        onehot = torch.zeros_like(logits)  # (B, Q, C)
        onehot[idx[0], idx[1], labels] = 1.0
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
            outputs: ``pred_logits`` (B, Q, C+1) softmax / (B, Q, C) sigmoid; ``pred_boxes`` (B, Q, 4) normalised
                cxcywh; optional ``aux_outputs`` (list of dicts, earlier layers), ``enc_outputs`` (matched
                one-to-one), ``one2many`` (same structure) and ``dn_outputs`` (with ``dn_meta``; assigned, not
                matched).
            targets: B dicts with ``labels`` (n,) int64 in [0, C) and ``boxes`` (n, 4) normalised cxcywh.

        Returns:
            Weighted () tensors: ``loss_ce``/``loss_bbox``/``loss_giou`` (final layer), ``{key}_{i}`` (aux layer
            i), ``{key}_enc``, ``{key}_o2m`` and ``{key}_o2m_{i}``, ``{key}_dn`` and ``{key}_dn_{i}``, ``loss``
            (their sum); and unweighted, detached diagnostics (``diagnostic_keys``): ``diag_class_error`` (top-1
            error in % over matched queries) and ``diag_cardinality_error`` (mean |#predicted - #targets| per
            image; CE: argmax is not no-object, sigmoid: max score > 0.5).

        Raises:
            RuntimeError: the criterion is not bound (:meth:`bind`).
        """
        if self.num_classes is None:
            raise RuntimeError("SetCriterion is not bound to a detector: call bind(num_classes, sigmoid_head) first "
                               "(DetectionModule binds its criterion to its detector)")
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
