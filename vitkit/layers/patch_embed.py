"""Patch sources: ``forward(images, mask=None) -> (tokens (B, h, w, D), mask (B, h, w))``, masks True = padding.

:class:`PatchEmbed` (ViT conv patchify) and :class:`BackbonePatchEmbed` (a timm CNN's last stage + 1x1
projection, the pixel mask nearest-resized to the feature grid, as DETR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from vitkit.kernels.fuse import fuse_frozen_batchnorm_into_conv
from vitkit.layers.timm_models import create_timm_model


def _pixel_mask(images: Tensor, mask: Tensor | None) -> Tensor:
    """Return a (B, H, W) bool padding mask, all False when ``mask`` is None."""
    B, _, H, W = images.shape
    if mask is None:
        return torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
    if mask.shape != (B, H, W):
        raise ValueError(f"mask must have shape {(B, H, W)} (B, H, W) to match images, got {tuple(mask.shape)}")
    return mask.bool()


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    """A 3x3 conv (no bias) + BatchNorm + ReLU: one stem layer."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PatchEmbed(nn.Module):
    """Conv patchify: (B, C, H, W) -> tokens (B, h, w, D) with h = ceil(H / p), w = ceil(W / p).

    Args:
        patch_size: side of a square patch in pixels.
        embed_dim: token width D.
        bias: whether the projection has a bias.
        stem_channels: optional conv stem: one 3x3 stride-2 conv + BatchNorm + ReLU per entry, then ``proj``
            covers the remaining stride. ``2 ** len(stem_channels)`` must divide ``patch_size``. Activations
            over padding are re-zeroed after every stem layer.
        stem_depths: per stride-2 stem layer, how many 3x3 stride-1 conv-BN-ReLU layers of the same width follow
            it (None = none).
    """
    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        stem_channels: list[int] | None = None,
        stem_depths: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.stride = patch_size
        stem_channels = list(stem_channels or [])
        if patch_size % (2 ** len(stem_channels)):
            raise ValueError(f"stem_channels: {len(stem_channels)} stride-2 layers do not divide patch_size "
                             f"{patch_size}; use at most log2(patch_size) entries")
        depths = list(stem_depths) if stem_depths is not None else [0] * len(stem_channels)
        if len(depths) != len(stem_channels) or min(depths, default=0) < 0:
            raise ValueError(f"stem_depths {stem_depths} needs one count >= 0 per stem_channels entry "
                             f"({len(stem_channels)})")
        self.stem = nn.ModuleList()
        self.stem_blocks = nn.ModuleList()  # (stride-1 layers after stem layer i), empty lists without any
        for c, depth in zip(stem_channels, depths, strict=True):
            self.stem.append(_conv_bn_relu(in_chans, c, stride=2))
            self.stem_blocks.append(nn.ModuleList(_conv_bn_relu(c, c, stride=1) for _ in range(depth)))
            in_chans = c
        k = patch_size // 2 ** len(stem_channels)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=k, stride=k, bias=bias)

    @property
    def stem_strides(self) -> dict[int, int]:
        """{stride: channels} of the stem's feature maps (empty without a stem)."""
        return {2 ** (i + 1): layer[0].out_channels for i, layer in enumerate(self.stem)}

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patchify; images are zero-padded right/bottom to a multiple of the patch size.

        Args:
            images: (B, C, H, W), any H and W. Padded pixels should be zero.
            mask: optional (B, H, W) pixel padding mask, True = padding.

        Returns:
            tokens: (B, h, w, D).
            mask: (B, h, w) token padding mask, True where a patch holds no real pixel.
        """
        tokens, tok_mask, _ = self.forward_with_stem(images, mask)
        return tokens, tok_mask

    def forward_with_stem(self, images: Tensor, mask: Tensor | None = None
                          ) -> tuple[Tensor, Tensor, dict[int, tuple[Tensor, Tensor]]]:
        """:meth:`forward` plus the stem's maps: {stride: (features (B, c, H/s, W/s) zero over padding,
        padding mask (B, H/s, W/s))}, for feature pyramids."""
        mask = _pixel_mask(images, mask)
        p = self.patch_size
        H, W = images.shape[-2:]
        pad_h, pad_w = (-H) % p, (-W) % p
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))  # zeros, (B, C, H', W')
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=True)  # (B, H', W')
        x = images
        valid = (~mask).unsqueeze(1).to(images.dtype)  # (B, 1, H', W')
        maps = {}
        for i, (layer, blocks) in enumerate(zip(self.stem, self.stem_blocks, strict=True)):
            valid = F.max_pool2d(valid, kernel_size=2, stride=2)  # (B, 1, H'/2^i, W'/2^i): any real pixel
            keep = valid.to(x.dtype)  # (B, 1, H'/2^i, W'/2^i), 1 over real pixels
            x = layer(x) * keep  # (B, c_i, H'/2^i, W'/2^i), zero over padding
            for block in blocks:
                x = block(x) * keep
            maps[2 ** (i + 1)] = (x, valid.squeeze(1) == 0)
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        k = p // 2 ** len(self.stem)
        valid = F.max_pool2d(valid.float(), kernel_size=k, stride=k)  # (B, 1, h, w)
        return x, valid.squeeze(1) == 0, maps


class BackbonePatchEmbed(nn.Module):
    """A timm CNN's last feature stage used as a patch source (the classic DETR backbone).

    Args:
        model_name: any timm model that supports ``features_only`` (e.g. ``resnet50``).
        embed_dim: output width D (a 1x1 conv projects to it).
        pretrained: load timm's pretrained weights (network or local cache).
        pretrained_file: a local ``.safetensors`` / ``.pth`` of the timm model's weights (wins over ``pretrained``).
        frozen_bn: replace BatchNorm with FrozenBatchNorm2d, applied inside the conv before it.
        freeze_at: freeze parameters up to feature level ``freeze_at`` (ResNet: 1 = stem, 2 = stem + layer1).
        channels_last: run the CNN in channels_last memory format.
        **timm_kwargs: extra keyword arguments for ``timm.create_model``.
    """
    def __init__(
        self,
        model_name: str = "resnet50",
        embed_dim: int = 256,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        frozen_bn: bool = True,
        freeze_at: int = 0,
        channels_last: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.body = create_timm_model(model_name, pretrained, pretrained_file, features_only=True, out_indices=(-1,),
                                      **timm_kwargs)
        if frozen_bn:
            self.body = freeze_batch_norm_2d(self.body)
            fuse_frozen_batchnorm_into_conv(self.body)  # same weights and state_dict; no per-map BN pass
        info = self.body.feature_info
        self.stride = info.reduction()[-1]
        num_channels = info.channels()[-1]
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.input_proj = nn.Conv2d(num_channels, embed_dim, 1)
        self.channels_last = channels_last
        if freeze_at > 0:
            # detectron2's convention over timm's feature_info: freeze every child module up to and
            # including the one producing feature level ``freeze_at`` (resnet: 1 = stem, 2 = stem+layer1).
            names = [n for n, _ in self.body.named_children()]
            last = info.info[min(freeze_at, len(info.info)) - 1]["module"].replace(".", "_")
            for name in names[: names.index(last) + 1]:
                for prm in getattr(self.body, name).parameters():
                    prm.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the CNN on (B, 3, H, W) normalised images with an optional (B, H, W) pixel mask (True = padding).

        Returns:
            tokens (B, h, w, D) with h ~ H / stride, and the nearest-resized mask (B, h, w).
        """
        mask = _pixel_mask(images, mask)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feat = self.body(images)[-1]  # (B, C, h, w)
        x = self.input_proj(feat)  # (B, D, h, w)
        tok_mask = F.interpolate(mask[:, None].float(), size=x.shape[-2:]).squeeze(1).bool()  # (B, h, w)
        return x.permute(0, 2, 3, 1), tok_mask  # (B, h, w, D)
