"""Set-prediction losses for DETR-style detectors: Hungarian matching, then class + L1 + GIoU losses.

Differences from the reference (DETR's SetCriterion):

- One module serves two classification losses (the key is ``loss_ce`` for both). The detector's head decides
  (``DETR.sigmoid_head``, bound by :meth:`SetCriterion.bind`, never a config key of its own):
  - ``"ce"`` (softmax heads): softmax cross-entropy over C+1 classes, no-object weighted by ``eos_coef``;
    mean weighted by the class weights (``F.cross_entropy`` with ``weight``), as DETR does.
  - ``"varifocal"`` (sigmoid heads; VFL, IoU-aware classification as in RT-DETR): the matched class's target
    is the IoU (detached) of the predicted box with its GT, every other entry 0; BCE-with-logits weighted by
    ``alpha * sigmoid(x)^gamma`` on entries that are not the matched class and by the IoU target on those that
    are; summed over all (B, Q, C) elements (no no-object slot) and divided by ``num_boxes``. RT-DETR uses
    ``focal_alpha=0.75`` for this loss. (The plain focal loss was retired: every shipped sigmoid recipe trains
    with varifocal, and no supported weight format needs a loss.)
- The part is built from its config (loss weights, ``focal_alpha``, the one-to-many factors and the ``matcher``
  with its costs) and bound to the detector by the training module: the class count and the head kind come
  from the detector, and the matcher's class cost follows the same head and ``focal_alpha``.
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
from torchvision.ops import generalized_box_iou_loss

from vitkit.detection.box_ops import cxcywh_to_xyxy, paired_box_iou
from vitkit.detection.matcher import FOCAL_GAMMA, HungarianMatcher
from vitkit.utils.distributed import is_distributed, world_size


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

    Build it with its settings, then :meth:`bind` it to the detector's class count and head (the training module
    does); an unbound criterion refuses to compute.

    Args:
        matcher: the assignment used for every layer and branch (its class cost is bound to the same head).
        loss_ce, loss_bbox, loss_giou: weights of the classification, L1 and GIoU losses.
        eos_coef: CE weight of the no-object class (softmax heads only).
        focal_alpha: alpha of the varifocal loss and of the matcher's focal class cost (sigmoid heads only; gamma
            is :data:`FOCAL_GAMMA`).
        one2many_k: times each target is repeated when matching the ``one2many`` branch.
        enc_one2many_k: times each target is repeated when matching the two-stage encoder proposals
            (``enc_outputs``); 1 is one-to-one. Every token is a proposal, so repeating gives the encoder
            several positives per object, as dense detectors have.
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
            num_classes: C, the detector's object classes (no-object excluded): a softmax head emits C+1 logits,
                a sigmoid head C.
            sigmoid_head: the detector's head kind (``DETR.sigmoid_head``): True = C sigmoid logits trained with
                the varifocal loss; False = C+1 softmax logits (last = no-object) trained with cross-entropy.

        Raises:
            ValueError: naming ``model.criterion``, when it is already bound to another class count or head (one
                criterion serves one detector).
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

        Raises:
            RuntimeError: the criterion is not bound to a detector (:meth:`bind`).
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
