"""(d) Caption generation, 16 images x 20 new tokens, greedy and beam 3: vitkit ``Captioner.generate`` against
Hugging Face ``VisionEncoderDecoderModel.generate``.

Architecture (random weights on both sides, images 3 x 224 x 224, vocabulary 10000, ids pad 0 / bos 1 / eos 2):
  - vitkit: the captioner of ``configs/caption_coco.yaml``: a ViT-S/16-sized encoder (d=384, 12 blocks, 6 heads,
    2D RoPE, no class token) and a 6-layer d=512 causal decoder (8 heads, MLP 2048) with learned token
    positions and tied output weights; max_length 40 (the config's data.max_length);
  - peer: ``ViTModel`` (d=384, 12 layers, 6 heads, MLP 1536, patch 16, no pooler) + ``GPT2LMHeadModel``
    (d=512, 6 layers, 8 heads, MLP 2048, ``add_cross_attention=True``, 40 positions, tied embeddings), joined by
    ``VisionEncoderDecoderModel`` (which adds the 384 -> 512 projection vitkit also has).
Exactly 20 new tokens on both sides, EOS made impossible: vitkit ``generate(max_length=21, min_length=20)``
(BOS + 20 tokens; EOS is forbidden until 20 tokens follow BOS, and a sequence reaching max_length ends without
EOS); peer ``generate(max_new_tokens=20, min_new_tokens=20)`` (its min-length processor masks EOS for the first
20 tokens). Both use their KV caches, length_penalty 1, no n-gram blocking; the generated lengths are
recorded. Everything runs under ``torch.inference_mode``.

Records (``--quick``: 2 images at 64 x 64, 3 tokens, 2 + 2 layers):
  - ``caption_{greedy,beam3}``: vitkit with its inference lever (``apply_precision(model, "bf16")``: bf16 weights
    and input, linear weights prepacked for oneDNN on the CPU) against the peer in fp32 (its default);
  - ``caption_{greedy,beam3}_fp32``: both fp32 (vitkit through ``apply_precision(model, "fp32")``);
    ``caption_{greedy,beam3}_bf16``: both bf16 weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from benchmarks.common import Settings, fault_fields, maybe_profile, record, require, time_interleaved
from vitkit.kernels.precision import apply_precision

WORKLOAD = "caption"
VOCAB, PAD, BOS, EOS = 10000, 0, 1, 2
MAX_LENGTH = 40


def _sizes(settings: Settings) -> dict[str, int]:
    if settings.quick:
        return {"batch": 2, "size": 64, "tokens": 3, "enc_depth": 2, "dec_depth": 2}
    return {"batch": 16, "size": 224, "tokens": 20, "enc_depth": 12, "dec_depth": 6}


def build_vitkit_captioner(enc_depth: int = 12, dec_depth: int = 6):
    """The captioner of configs/caption_coco.yaml (random weights)."""
    from vitkit.captioning import Captioner
    from vitkit.core import TransformerDecoder, ViTEncoder

    enc = ViTEncoder(patch_size=16, embed_dim=384, depth=enc_depth, num_heads=6, pos_embed="rope", class_token=False,
                     drop_path=0.1)
    dec = TransformerDecoder(dim=512, depth=dec_depth, num_heads=8, mlp_ratio=4.0, dropout=0.1,
                             return_intermediate=False)
    return Captioner(enc, dec, vocab_size=VOCAB, max_length=MAX_LENGTH, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                     label_smoothing=0.1)  # the output projection is tied to the embedding


def build_hf_captioner(size: int = 224, enc_depth: int = 12, dec_depth: int = 6):
    """ViT + GPT-2 VisionEncoderDecoderModel at the same widths and depths (random weights)."""
    transformers = require("transformers", WORKLOAD)
    vit_cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=enc_depth, num_attention_heads=6,
                                     intermediate_size=1536, image_size=size, patch_size=16, qkv_bias=True)
    gpt_cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=MAX_LENGTH, n_embd=512, n_layer=dec_depth,
                                      n_head=8, n_inner=2048, add_cross_attention=True, is_decoder=True,
                                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                      tie_word_embeddings=True)
    model = transformers.VisionEncoderDecoderModel(encoder=transformers.ViTModel(vit_cfg, add_pooling_layer=False),
                                                   decoder=transformers.GPT2LMHeadModel(gpt_cfg))
    gc = model.generation_config
    gc.decoder_start_token_id, gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS, BOS, EOS, PAD
    model.config.decoder_start_token_id, model.config.pad_token_id = BOS, PAD
    return model


def run(settings: Settings) -> list[dict[str, Any]]:
    s = _sizes(settings)
    torch.manual_seed(settings.seed)
    peer32 = build_hf_captioner(s["size"], s["enc_depth"], s["dec_depth"]).eval()
    torch.manual_seed(settings.seed)
    vk32 = build_vitkit_captioner(s["enc_depth"], s["dec_depth"]).eval()
    vk16, peer16 = copy.deepcopy(vk32), copy.deepcopy(peer32).to(torch.bfloat16)
    apply_precision(vk16, "bf16")  # vitkit's lever (bf16 weights, linear weights prepacked for oneDNN on the CPU)
    apply_precision(vk32, "fp32")  # fp32 reference rows: linear weights prepacked for oneDNN too
    x32 = torch.randn(s["batch"], 3, s["size"], s["size"], generator=torch.Generator().manual_seed(settings.seed))
    x16 = x32.to(torch.bfloat16)
    n = s["tokens"]

    def vitkit(model, x, beams):
        method = "greedy" if beams == 1 else "beam"

        @torch.inference_mode()
        def call():
            return model.generate(x, method=method, num_beams=beams, max_length=n + 1, min_length=n)[0]

        return call

    def peer(model, x, beams):
        @torch.inference_mode()
        def call():
            return model.generate(pixel_values=x, max_new_tokens=n, min_new_tokens=n, num_beams=beams,
                                  do_sample=False, length_penalty=1.0, early_stopping=False)

        return call

    out = []
    for beams, tag in ((1, "greedy"), (3, "beam3")):
        fns = {"vitkit_bf16": vitkit(vk16, x16, beams), "vitkit_fp32": vitkit(vk32, x32, beams),
               "peer_fp32": peer(peer32, x32, beams), "peer_bf16": peer(peer16, x16, beams)}
        ids = {k: fn() for k, fn in fns.items()}  # (B, 1 + new tokens): BOS / decoder start first
        new_tokens = {k: int(v.shape[1]) - 1 for k, v in ids.items()}
        eos_in_output = {k: bool((v[:, 1:] == EOS).any()) for k, v in ids.items()}
        faults: dict[str, list[int]] = {}
        times = time_interleaved(fns, settings.reps, settings.warmup, faults)
        maybe_profile(settings, f"{WORKLOAD}_{tag}", fns)
        common = {"method": tag, "num_beams": beams, "batch_shape": [s["batch"], 3, s["size"], s["size"]],
                  "new_tokens": new_tokens, "eos_generated": eos_in_output, "threads": settings.threads,
                  "peer_attn_implementation": peer32.config.decoder._attn_implementation,
                  "vitkit_params": sum(p.numel() for p in vk32.parameters()),
                  "peer_params": sum(p.numel() for p in peer32.parameters())}
        name = f"transformers.VisionEncoderDecoderModel ViT+GPT2 generate ({{}}, {tag})"
        out.append(record(f"{WORKLOAD}_{tag}", times["vitkit_bf16"], name.format("fp32"), times["peer_fp32"],
                          dtype="bf16 weights", peer_dtype="fp32", **fault_fields(faults, "vitkit_bf16", "peer_fp32"),
                          **common))
        out.append(record(f"{WORKLOAD}_{tag}_fp32", times["vitkit_fp32"], name.format("fp32"), times["peer_fp32"],
                          dtype="fp32", peer_dtype="fp32",
                          **fault_fields(faults, "vitkit_fp32", "peer_fp32"), **common))
        out.append(record(f"{WORKLOAD}_{tag}_bf16", times["vitkit_bf16"], name.format("bf16"), times["peer_bf16"],
                          dtype="bf16 weights", peer_dtype="bf16 weights",
                          **fault_fields(faults, "vitkit_bf16", "peer_bf16"), **common))
    return out
