"""ViTEncoder: patch source + 2D positional encoding + encoder blocks + final norm (task-agnostic).

``pos_embed`` in {"learned", "sine", "rope"}; ``pos_mode`` "input" adds learned/sine once to the patch tokens,
"qk" adds them to q and k in every block. Padding-aware: tokens over an image's real area do not depend on padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vitkit.core.timm_vit import encoder_from_timm
from vitkit.layers import EncoderBlock, LearnedPositionEncoding2D, PatchEmbed, RoPE2D, SinePositionEncoding2D
from vitkit.layers.timm_models import create_timm_model


@dataclass
class EncoderOutput:
    """What the encoder hands to a decoder.

    Attributes:
        tokens: (B, P + h*w, D), P prefix tokens first, then patches in row-major order.
        mask: (B, P + h*w) bool key padding mask, True = padding (prefix tokens never are).
        pos: (B, P + h*w, D) per-block positions of a ``pos_mode="qk"`` encoder (prefix rows: learned prefix
            positions, else zeros), or None when positions were added at the input or are rotary.
        grid: (h, w) patch grid.
        num_prefix: P.
        stem: with ``forward(..., return_stem=True)`` and a conv-stem patch source, its maps
            {stride: (features (B, c, H/s, W/s) zero over padding, padding mask (B, H/s, W/s))}; else empty.
    """
    tokens: Tensor
    mask: Tensor
    pos: Tensor | None
    grid: tuple[int, int]
    num_prefix: int
    stem: dict = field(default_factory=dict)


class ViTEncoder(nn.Module):
    """Vision transformer encoder.

    Args:
        patch_embed: a patch source module; None builds a conv ``PatchEmbed`` from
            ``patch_size``/``in_chans``/``embed_dim``.
        stem_channels: optional conv stem for the built ``PatchEmbed`` (3x3 stride-2 conv-BN-ReLU layers).
        stem_depths: stride-1 conv-BN-ReLU layers after each stem layer.
        img_size: reference image size; sets the learned table's grid (img_size // patch_size).
        embed_dim: width D.
        mlp_ratio: MLP width multiple (ignored when ``mlp_dim`` is set).
        pos_embed: "learned" | "sine" | "rope".
        pos_mode: "input" (add once) or "qk" (add to q/k in every block) for learned/sine encodings.
        reg_tokens: number of register tokens after the class token.
        no_embed_class: prefix tokens get no learned position.
        pre_norm, final_norm: LayerNorm on tokens before / after the blocks.
        norm_first: pre-norm blocks (ViT) or post-norm (DETR).
        dropout, attn_drop, drop_path: regularisation; drop path grows linearly to ``drop_path``.
        act, norm_eps, rope_base: MLP activation name, LayerNorm eps, :class:`RoPE2D`'s period base.
    """
    def __init__(
        self,
        patch_embed: nn.Module | None = None,
        *,
        patch_size: int = 16,
        patch_bias: bool = True,
        stem_channels: list[int] | None = None,
        stem_depths: list[int] | None = None,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        pos_embed: str = "learned",
        pos_mode: str = "input",
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        pre_norm: bool = False,
        norm_first: bool = True,
        final_norm: bool = True,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act: str = "gelu",
        norm_eps: float = 1e-6,
        rope_base: float = 100.0,
    ) -> None:
        super().__init__()
        if pos_embed not in ("learned", "sine", "rope"):
            raise ValueError(f"pos_embed must be learned|sine|rope, got {pos_embed!r}")
        if pos_mode not in ("input", "qk"):
            raise ValueError(f"pos_mode must be input|qk, got {pos_mode!r}")
        self.patch_embed = patch_embed or PatchEmbed(patch_size, in_chans, embed_dim, bias=patch_bias,
                                                         stem_channels=stem_channels, stem_depths=stem_depths)
        D = self.patch_embed.embed_dim
        if embed_dim != D:
            raise ValueError(f"patch source width {D} != embed_dim {embed_dim}")
        self.embed_dim, self.num_heads = D, num_heads
        self.pos_kind, self.pos_mode = pos_embed, pos_mode
        self.num_prefix = int(class_token) + reg_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, D)) if reg_tokens else None
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        stride = getattr(self.patch_embed, "stride", patch_size)
        self.pos = None
        self.rope = None
        if pos_embed == "learned":
            npos = 0 if no_embed_class else self.num_prefix
            self.pos = LearnedPositionEncoding2D(D, (img[0] // stride, img[1] // stride), num_prefix=npos)
        elif pos_embed == "sine":
            self.pos = SinePositionEncoding2D(D)
        else:
            self.rope = RoPE2D(D // num_heads, base=rope_base)
        self.norm_pre = nn.LayerNorm(D, eps=norm_eps) if pre_norm else nn.Identity()
        dpr = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(
            EncoderBlock(D, num_heads, mlp_dim=mlp_dim, mlp_ratio=mlp_ratio, dropout=dropout, attn_drop=attn_drop,
                         drop_path=dpr[i], norm_first=norm_first, act=act, norm_eps=norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(D, eps=norm_eps) if final_norm else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for t in (self.cls_token, self.reg_token):
            if t is not None:
                nn.init.normal_(t, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, images: Tensor, mask: Tensor | None = None, return_stem: bool = False) -> EncoderOutput:
        """Encode an image batch into an :class:`EncoderOutput` with tokens (B, P + h*w, D).

        Args:
            images: (B, C, H, W) normalised images, zero where padded.
            mask: optional (B, H, W) pixel padding mask, True = padding.
            return_stem: also return the conv stem's feature maps (``EncoderOutput.stem``), when there is one.
        """
        stem = {}
        if return_stem and hasattr(self.patch_embed, "forward_with_stem"):
            grid, grid_mask, stem = self.patch_embed.forward_with_stem(images, mask)  # (B, h, w, D), (B, h, w)
        else:
            grid, grid_mask = self.patch_embed(images, mask)  # (B, h, w, D), (B, h, w)
        B, h, w, D = grid.shape
        x = grid.reshape(B, h * w, D)  # (B, h*w, D)
        key_mask = grid_mask.reshape(B, h * w)  # (B, h*w)
        pos = None
        if self.pos is not None:
            pos = self.pos(grid_mask, dtype=x.dtype).reshape(B, h * w, D)  # (B, h*w, D)
        rope = self.rope(grid_mask) if self.rope is not None else None

        prefix = self._prefix_tokens(B, x.dtype)  # (B, P, D) or None
        if pos is not None and self.pos_mode == "input":
            x = x + pos
            if prefix is not None and getattr(self.pos, "prefix", None) is not None:
                prefix = prefix + self.pos.prefix.to(x.dtype)
        if prefix is not None:
            x = torch.cat((prefix, x), dim=1)  # (B, P + h*w, D)
            key_mask = torch.cat((key_mask.new_zeros(B, self.num_prefix), key_mask), dim=1)
        block_pos = None
        if pos is not None and self.pos_mode == "qk":
            block_pos = pos
            if prefix is not None:
                pre = self.pos.prefix if getattr(self.pos, "prefix", None) is not None else None
                pre = pre.expand(B, -1, -1).to(x.dtype) if pre is not None else x.new_zeros(B, self.num_prefix, D)
                block_pos = torch.cat((pre, pos), dim=1)  # (B, P + h*w, D)
        x = self.norm_pre(x)
        kpm = key_mask if key_mask.any() else None
        for blk in self.blocks:
            x = blk(x, block_pos, kpm, rope)
        x = self.norm(x)
        return EncoderOutput(x, key_mask, block_pos, (h, w), self.num_prefix, stem)

    def _prefix_tokens(self, B: int, dtype: torch.dtype) -> Tensor | None:
        parts = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat(parts, dim=1).to(dtype) if parts else None  # (B, P, D)

    def forward_features(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, P + h*w, D) tokens, prefix first (timm's ``forward_features`` order)."""
        return self(images, mask).tokens

    @classmethod
    def from_timm(cls, model: nn.Module) -> ViTEncoder:
        """Build an encoder with the architecture and weights of a timm ``VisionTransformer``."""
        return encoder_from_timm(cls, model)


class TimmViTEncoder(ViTEncoder):
    """A :class:`ViTEncoder` with the architecture (and optionally the pretrained weights) of a timm ViT.

    The result has ViTEncoder's forward and state-dict keys.

    Args:
        model_name: a timm ``VisionTransformer`` name, e.g. ``vit_small_patch16_224``.
        pretrained: timm's default weights (download or cache).
        pretrained_file: a local ``.safetensors`` / ``.pth`` of that model's timm weights (offline).
        timm_kwargs: more ``timm.create_model`` arguments.
    """
    def __init__(self, model_name: str = "vit_small_patch16_224", pretrained: bool = False,
                 pretrained_file: str | None = None, **timm_kwargs) -> None:

        vit = create_timm_model(model_name, pretrained, pretrained_file, num_classes=0, **timm_kwargs)
        built = encoder_from_timm(ViTEncoder, vit)
        nn.Module.__init__(self)
        self.__dict__.update(built.__dict__)  # take over the converted modules, buffers and settings
