"""The Hugging Face peers of the learning race, random init, trained by a plain PyTorch loop on the same files.

- Detection: ``RTDetrForObjectDetection`` built from an ``RTDetrConfig`` (no download, no timm): an RT-DETR
  ResNet-18-like backbone (``RTDetrResNetConfig``: basic blocks, depths 2-2-2-2, widths 64-128-256-512, deep stem,
  stages 2-4 out, trainable BatchNorm since nothing is pretrained; built from this config, random weights), hybrid
  encoder at width 128 (FFN 512, CSP expansion 0.5, one AIFI layer on stride 32), d_model 128, 3 decoder layers
  (8 heads, FFN 512, 4 points per level), 100 queries, anchors generated for the actual input size; its own defaults
  for the rest: 100 contrastive denoising queries (label noise 0.5, box noise 1.0), varifocal loss (alpha 0.75,
  gamma 2) + L1 5 + GIoU 2 on every decoder layer and the encoder proposals, Hungarian costs class 2 / L1 5 / GIoU 2.
  Loss: the model's own (``labels=``). Input: images in [0, 1] (RT-DETR's image processor does not normalise),
  letterboxed to a fixed square (long side to ``size``, zero padding bottom/right); training flips horizontally with
  p 0.5. Evaluation: ``RTDetrImageProcessor.post_process_object_detection`` (top-100 sigmoid scores, threshold 0),
  boxes back to original pixels, clipped, labels mapped to the file's category ids.
- Captioning: ``VisionEncoderDecoderModel`` = ``ViTModel`` (d 256, 4 layers, 4 heads, MLP 1024, patch 16, no
  pooler, image size ``size``) + ``GPT2LMHeadModel`` (d 256, 3 layers, 4 heads, MLP 1024, cross-attention, dropout
  0.1, ``max_length`` positions, tied embeddings) over vitkit's word-level caption tokenizer (the same vocabulary
  and special ids as vitkit's side). Loss: the model's own cross-entropy (``labels=``, PAD ignored). Input:
  normalised with mean = std = 0.5 (ViT's image processor), letterboxed as above; training mirrors with the vitkit
  config's ``hflip_p`` and swaps "left"/"right" in the caption (as vitkit's datamodule does); one random reference
  per image per epoch. Evaluation: greedy ``generate`` to the vitkit config's ``data.max_length``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmarks.common import require
from vitkit.captioning import CaptionTokenizer
from vitkit.captioning.datamodule import swap_left_right
from vitkit.data import CocoDetection
from vitkit.data.coco_captions import CocoCaptions
from vitkit.eval.coco_files import read_json
from vitkit.eval.coco_results import detection_entries

WORKLOAD = "learning race"


def letterbox_size(root: Path, multiple: int = 32) -> int:
    """The peers' square input side: the longest image side of the data set, rounded up to ``multiple``."""
    longest = 0
    for split in ("train", "val"):
        images = read_json(str(root / "annotations" / f"instances_{split}2017.json"), "annotation file")["images"]
        longest = max([longest, *(max(int(im["width"]), int(im["height"])) for im in images)])
    return max(multiple, math.ceil(longest / multiple) * multiple)


class Letterbox:
    """``(image, target)`` -> the image resized (long side to ``size``) and zero-padded bottom/right to a square;
    ``target["boxes"]`` (tv_tensors) follow. Then to float in [0, 1], normalised with ``mean``/``std`` if given."""

    def __init__(self, size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image: Any, target: dict | None = None) -> Any:
        h, w = F.get_size(image)
        scale = self.size / max(h, w)
        new_hw = [max(1, round(h * scale)), max(1, round(w * scale))]
        pad = [0, 0, self.size - new_hw[1], self.size - new_hw[0]]  # left, top, right, bottom
        image = F.pad(F.resize(image, new_hw, antialias=True), pad, fill=0)
        image = F.to_dtype(image, torch.float32, scale=True)
        if self.mean is not None:
            image = F.normalize(image, mean=list(self.mean), std=list(self.std))
        if target is None:
            return image
        target["boxes"] = F.pad(F.resize(target["boxes"], new_hw), pad)
        return image, target


# ------------------------------------------------------------------------------------------------- detection

def build_rtdetr(num_labels: int) -> torch.nn.Module:
    """RT-DETR sized like vitkit's shapes detector (see the module docstring), random weights."""
    transformers = require("transformers", WORKLOAD)
    backbone = transformers.RTDetrResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                               layer_type="basic", out_indices=[2, 3, 4])
    config = transformers.RTDetrConfig(
        backbone_config=backbone, num_labels=num_labels, freeze_backbone_batch_norms=False,
        encoder_in_channels=[128, 256, 512], encoder_hidden_dim=128, encoder_ffn_dim=512, hidden_expansion=0.5,
        d_model=128, decoder_in_channels=[128, 128, 128], decoder_ffn_dim=512, decoder_layers=3, num_queries=100,
        anchor_image_size=None)  # anchors from each input's feature-map sizes (older releases defaulted to 640 px)
    return transformers.RTDetrForObjectDetection(config)


def rtdetr_processor() -> Any:
    """The post-processor of RT-DETR's outputs (``RTDetrImageProcessor``, default settings, no download)."""
    return require("transformers", WORKLOAD).RTDetrImageProcessor()


def rtdetr_config_summary(model: torch.nn.Module) -> dict[str, Any]:
    """The settings of the RT-DETR config that size it and define its losses (for the JSON record)."""
    c = model.config
    keys = ("d_model", "encoder_hidden_dim", "encoder_ffn_dim", "encoder_layers", "hidden_expansion", "num_queries",
            "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads", "decoder_n_points", "num_denoising",
            "label_noise_ratio", "box_noise_scale", "use_focal_loss", "focal_loss_alpha", "focal_loss_gamma",
            "weight_loss_vfl", "weight_loss_bbox", "weight_loss_giou", "matcher_class_cost", "matcher_bbox_cost",
            "matcher_giou_cost", "freeze_backbone_batch_norms")
    b = c.backbone_config
    return {**{k: getattr(c, k) for k in keys},
            "backbone": {"layer_type": b.layer_type, "depths": list(b.depths), "hidden_sizes": list(b.hidden_sizes)}}


def _detection_train_item(sample: tuple[Tensor, dict]) -> tuple[Tensor, dict[str, Tensor]]:
    image, target = sample
    return image, {"class_labels": target["labels"], "boxes": target["boxes"]}


def collate_rtdetr_train(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """(B, 3, S, S) images and RT-DETR labels: ``class_labels`` (n,), ``boxes`` (n, 4) cxcywh in [0, 1]."""
    items = [_detection_train_item(s) for s in batch if s is not None]
    return torch.stack([i for i, _ in items]), [t for _, t in items]


def collate_rtdetr_eval(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict[str, Any]]]:
    items = [s for s in batch if s is not None]
    return torch.stack([i for i, _ in items]), [t for _, t in items]


class _Substitute(Dataset):
    """An unreadable training image (None) is replaced by the next readable one (vitkit's ``bad_images: skip``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        for k in range(len(self.dataset)):
            item = self.dataset[(index + k) % len(self.dataset)]
            if item is not None:
                return item
        raise RuntimeError("no readable training image")


def rtdetr_loaders(root: Path, size: int, batch_size: int, num_workers: int) -> tuple[DataLoader, DataLoader]:
    """Training (flip + letterbox, shuffled) and validation (letterbox) loaders over the COCO-layout files."""
    train_tf = v2.Compose([v2.RandomHorizontalFlip(p=0.5), Letterbox(size)])
    train = CocoDetection(root, "train", transforms=train_tf, bad_images="skip")
    val = CocoDetection(root, "val", transforms=Letterbox(size), bad_images="skip")
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    return (DataLoader(_Substitute(train), batch_size=batch_size, shuffle=True, collate_fn=collate_rtdetr_train,
                       drop_last=False, **common),
            DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collate_rtdetr_eval, **common))


def rtdetr_results(model: torch.nn.Module, processor: Any, loader: DataLoader, label_to_cat_id: Sequence[int],
                   autocast: Callable[[], Any]) -> list[dict[str, Any]]:
    """COCO result entries of the validation split: top-100 detections per image, xyxy original pixels."""
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        with autocast():
            outputs = model(pixel_values=images)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        # letterboxed: normalised boxes x the padded square's side in original pixels = the original long side
        sides = [int(t["orig_size"].max()) for t in targets]
        dets = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(s, s) for s in sides])
        for t, d in zip(targets, dets, strict=True):
            h, w = (int(v) for v in t["orig_size"])
            boxes = d["boxes"].float()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(d["scores"])
            results += detection_entries(boxes[finite], d["scores"][finite].float(), d["labels"][finite],
                                         int(t["image_id"]), label_to_cat_id)
    return results


# ------------------------------------------------------------------------------------------------- captions

def build_ved(tokenizer: CaptionTokenizer, max_length: int, size: int) -> torch.nn.Module:
    """ViT (d 256 x 4) + GPT-2 (d 256 x 3, cross-attention) over ``tokenizer``'s ids, random weights."""
    transformers = require("transformers", WORKLOAD)
    vit = transformers.ViTConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                 image_size=size, patch_size=16, qkv_bias=True)
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    gpt = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=max_length, n_embd=256, n_layer=3,
                                  n_head=4, n_inner=1024, add_cross_attention=True, is_decoder=True,
                                  bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=True)
    model = transformers.VisionEncoderDecoderModel(encoder=transformers.ViTModel(vit, add_pooling_layer=False),
                                                   decoder=transformers.GPT2LMHeadModel(gpt))
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = bos, pad, eos
    gc = model.generation_config
    gc.decoder_start_token_id, gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, bos, eos, pad
    return model


class MirroredCaptions(Dataset):
    """Training items ``(image, caption)`` mirrored left-right with probability ``p``, "left"/"right" swapped."""

    def __init__(self, dataset: CocoCaptions, p: float) -> None:
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        for k in range(len(self.dataset)):
            item = self.dataset[(index + k) % len(self.dataset)]
            if item is not None:
                break
        else:
            raise RuntimeError("no readable training image")
        image, caption, _ = item
        if self.p > 0 and random.random() < self.p:
            image, caption = image.flip(-1), swap_left_right(caption)  # (3, S, S) mirrored along W
        return image, caption


class VedCollate:
    """(images (B, 3, S, S), tokens (B, T) ``[BOS] words [EOS] [PAD]...``) from ``(image, caption)`` items."""

    def __init__(self, tokenizer: CaptionTokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: Sequence[tuple[Tensor, str]]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer.encode_batch([c for _, c in batch], max_length=self.max_length)  # (B, T)
        return torch.stack([i for i, _ in batch]), tokens


def _collate_caption_eval(batch: Sequence[Any]) -> tuple[Tensor, list[int]]:
    items = [s for s in batch if s is not None]
    return torch.stack([s[0] for s in items]), [int(s[2]) for s in items]


def ved_loaders(root: Path, size: int, batch_size: int, num_workers: int, tokenizer: CaptionTokenizer,
                max_length: int, hflip_p: float) -> tuple[DataLoader, DataLoader, dict[int, list[str]]]:
    """Training and validation loaders, and the validation references (image id -> captions)."""
    tf = Letterbox(size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train = CocoCaptions(root, "train", transforms=tf, bad_images="skip")
    val = CocoCaptions(root, "val", transforms=tf, bad_images="skip")
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    train_loader = DataLoader(MirroredCaptions(train, hflip_p), batch_size=batch_size, shuffle=True,
                              collate_fn=VedCollate(tokenizer, max_length), **common)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=_collate_caption_eval, **common)
    return train_loader, val_loader, val.references


def ved_loss(model: torch.nn.Module, images: Tensor, tokens: Tensor, pad_id: int) -> Tensor:
    """Teacher-forced cross-entropy: inputs ``tokens[:, :-1]``, labels ``tokens[:, 1:]`` with PAD ignored."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:].masked_fill(tokens[:, 1:] == pad_id, -100)  # (B, T-1)
    return model(pixel_values=images, decoder_input_ids=inputs, decoder_attention_mask=(inputs != pad_id).long(),
                 labels=labels).loss


def ved_captions(model: torch.nn.Module, loader: DataLoader, tokenizer: CaptionTokenizer, max_length: int,
                 autocast: Callable[[], Any]) -> dict[int, str]:
    """Greedy captions of the validation split (``max_length`` ids, the decoder start token included)."""
    captions: dict[int, str] = {}
    for images, image_ids in loader:
        with autocast():
            ids = model.generate(pixel_values=images, max_length=max_length, num_beams=1, do_sample=False)
        captions.update(zip(image_ids, tokenizer.decode_batch(ids.cpu()), strict=True))
    return captions
