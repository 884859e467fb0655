"""Official DETR weights: Hugging Face and facebookresearch/detr layouts -> vitkit, checked against transformers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vitkit.detection.official_weights import (
    detr_format,
    detr_r50,
    detr_r50_config,
    hf_to_vitkit,
    load_detr_weights,
    official_to_vitkit,
    read_detr_weights,
    select_classes,
)
from vitkit.io.load import build_predictor

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_detr():
    """A random-weight transformers DetrForObjectDetection (DETR-R50, 91 classes), weights spread out so that
    every layer moves the output (at DETR's init the queries barely differ)."""
    torch.manual_seed(0)
    config = transformers.DetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
                                     num_labels=91)
    model = transformers.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "backbone" in name:
                continue
            if p.ndim >= 2:
                p.normal_(0, 0.08)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0, 0.1)
        model.model.query_position_embeddings.weight.normal_()
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 160, 192)
    mask = torch.zeros(2, 160, 192, dtype=torch.bool)
    mask[1, :, 150:] = True  # the second image is 150 px wide, padded to 192
    x[1, :, :, 150:] = 0
    return x, mask


@pytest.fixture(scope="module")
def hf_out(hf_detr, batch):
    x, mask = batch
    with torch.no_grad():
        return hf_detr(pixel_values=x, pixel_mask=(~mask).long())


def _vitkit(state: dict) -> torch.nn.Module:
    model = detr_r50(91).eval()
    model.load_state_dict(state)  # strict: every key mapped, none left over
    return model


def _run(model, batch) -> dict:
    """Outputs plus the encoder's memory (B, N, D) and the last decoder layer's states (B, Q, D)."""
    states = []
    hook = model.decoder.register_forward_hook(lambda mod, args, out: states.append(out[-1]))
    with torch.no_grad():
        out = model(*batch)
        out["memory"] = model.encoder(*batch).tokens
    hook.remove()
    return {**out, "decoder": states[0]}


def _differences(model, batch, hf_out) -> dict[str, float]:
    out = _run(model, batch)
    pairs = {"pred_logits": hf_out.logits, "pred_boxes": hf_out.pred_boxes,
             "memory": hf_out.encoder_last_hidden_state, "decoder": hf_out.last_hidden_state}
    return {k: float((out[k] - ref).abs().max()) for k, ref in pairs.items()}


def _assert_parity(model, batch, hf_out) -> None:
    diffs = _differences(model, batch, hf_out)
    assert max(diffs.values()) <= 1e-4, diffs


def test_hugging_face_detr_converts_with_identical_outputs(hf_detr, batch, hf_out):
    state = hf_to_vitkit(hf_detr.state_dict())
    model = _vitkit(state)
    _assert_parity(model, batch, hf_out)
    for attn in (model.encoder.blocks[0].attn, model.decoder.layers[0].cross_attn):
        with torch.no_grad():  # the comparison catches a plausible mapping slip: k and v swapped in one layer
            q, k, v = attn.qkv.weight.clone().chunk(3)
            attn.qkv.weight.copy_(torch.cat((q, v, k)))
            diffs = _differences(model, batch, hf_out)
            attn.qkv.weight.copy_(torch.cat((q, k, v)))
        assert diffs["decoder"] > 1e-2, diffs


def _as_transformers4(state: dict) -> dict:
    """The hub files' spelling (transformers 4): conv_encoder, out_proj, fc1/fc2 on the layer."""
    out = {}
    for k, v in state.items():
        k = k.replace("model.backbone.model.", "model.backbone.conv_encoder.model.").replace(".o_proj.", ".out_proj.")
        out[re.sub(r"\.mlp\.(fc1|fc2)\.", r".\1.", k)] = v
    return out


def _as_official(state: dict) -> dict:
    """The facebookresearch/detr release layout of the same weights, built key by key from its published names."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.backbone.model."):
            out["backbone.0.body." + k[len("model.backbone.model."):]] = v
        elif k.startswith("model.input_projection."):
            out["input_proj." + k.rsplit(".", 1)[1]] = v
    names = {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": None,
             "mlp.fc1": "linear1", "mlp.fc2": "linear2"}
    for part, depth in (("encoder", 6), ("decoder", 6)):
        for i in range(depth):
            src, dst = f"model.{part}.layers.{i}.", f"transformer.{part}.layers.{i}."
            for attn, new in (("self_attn", "self_attn"), ("encoder_attn", "multihead_attn")):
                if f"{src}{attn}.q_proj.weight" not in state:
                    continue
                for kind in ("weight", "bias"):
                    out[f"{dst}{new}.in_proj_{kind}"] = torch.cat([state[f"{src}{attn}.{p}_proj.{kind}"]
                                                                   for p in "qkv"])
                    out[f"{dst}{new}.out_proj.{kind}"] = state[f"{src}{attn}.o_proj.{kind}"]
            for old, new in names.items():
                if f"{src}{old}.weight" not in state:  # the encoder has no cross-attention norm
                    continue
                new = new or ("norm2" if part == "encoder" else "norm3")
                for kind in ("weight", "bias"):
                    out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    for kind in ("weight", "bias"):
        out[f"transformer.decoder.norm.{kind}"] = state[f"model.decoder.layernorm.{kind}"]
        out[f"class_embed.{kind}"] = state[f"class_labels_classifier.{kind}"]
        for j in range(3):
            out[f"bbox_embed.layers.{j}.{kind}"] = state[f"bbox_predictor.layers.{j}.{kind}"]
    out["query_embed.weight"] = state["model.query_position_embeddings.weight"]
    return out


def test_transformers4_key_spelling_converts_the_same(hf_detr, batch, hf_out):
    state = _as_transformers4(hf_detr.state_dict())
    assert "model.encoder.layers.0.self_attn.out_proj.weight" in state and detr_format(state) == "hf"
    _assert_parity(_vitkit(hf_to_vitkit(state)), batch, hf_out)


def test_facebookresearch_layout_converts_with_identical_outputs(hf_detr, batch, hf_out, tmp_path):
    official = _as_official(hf_detr.state_dict())
    assert detr_format(official) == "official"
    _assert_parity(_vitkit(official_to_vitkit(official)), batch, hf_out)
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": official}, path)  # the torch.hub release format
    state, info = read_detr_weights(path)
    assert info == {"format": "official", "num_classes": 91}
    _assert_parity(_vitkit(state), batch, hf_out)


def test_hugging_face_folder_loads_as_a_detector_with_its_labels(hf_detr, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf_detr.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {str(i): f"thing{i}" for i in range(91)}}))
    spec, state = load_detr_weights(tmp_path, size=128, max_size=160)
    assert (spec.task, spec.size, spec.max_size, spec.model_config) == ("detection", 128, 160, detr_r50_config(91))
    det = build_predictor(spec, state, str(tmp_path))  # what vitkit.load(tmp_path) does, at other sizes
    assert not det.postprocess.sigmoid  # the release's softmax head with a no-object class
    assert det.class_names[:2] == ["thing0", "thing1"] and det.label_to_cat_id[5] == 5
    preds = det.predict([torch.randint(0, 255, (3, 100, 140), dtype=torch.uint8)], score_threshold=0.0)
    boxes = preds[0]["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, 0::2] >= -1e-3).all() and (boxes[:, 0::2] <= 140 + 1e-3).all()


def test_unknown_keys_and_unsafe_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no vitkit counterpart"):
        official_to_vitkit({"transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(3, 1),
                            "mask_head.lay1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="known layout"):
        detr_format({"foo.weight": torch.zeros(1)})

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": Payload()}}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_detr_weights(path)
    assert not (tmp_path / "pwned").exists()


def test_vitkit_load_reads_official_and_hugging_face_weights(hf_detr, batch, hf_out, tmp_path):
    import vitkit

    torch.save({"model": _as_official(hf_detr.state_dict())}, tmp_path / "detr.pth")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    torch.save(hf_detr.state_dict(), hf_dir / "pytorch_model.bin")
    for source in (tmp_path / "detr.pth", hf_dir, hf_dir / "pytorch_model.bin"):
        det = vitkit.load(source)
        _assert_parity(det.model, batch, hf_out)


def test_detr_r50_config_is_the_detector_of_the_r50_recipe():
    from pathlib import Path

    import yaml

    recipe = Path(__file__).resolve().parents[2] / "configs" / "detr_r50_coco.yaml"
    detector = yaml.safe_load(recipe.read_text())["model"]["detector"]
    config = detr_r50_config(91)
    assert config["init_args"].pop("num_classes") == 91  # linked from the data in the recipe
    assert config == detector


def test_select_classes_keeps_the_datasets_category_rows_and_no_object():
    state = {"class_embed.weight": torch.arange(92.0)[:, None].expand(92, 3), "class_embed.bias": torch.arange(92.0)}
    out = select_classes(state, [1, 3, 7, 9])
    assert out["class_embed.bias"].tolist() == [1, 3, 7, 9, 91]
    assert out["class_embed.weight"][:, 0].tolist() == [1, 3, 7, 9, 91]
    with pytest.raises(ValueError, match="do not fit"):
        select_classes(state, [91])


def test_eval_cli_evaluates_official_weights_on_a_coco_layout_split(hf_detr, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vitkit.data.shapes import ensure_shapes

    repo = Path(__file__).resolve().parents[2]
    ensure_shapes(tmp_path / "data", num_train=2, num_val=3, image_size=96, seed=0)
    torch.save({"model": _as_official(hf_detr.state_dict())}, tmp_path / "detr.pth")
    config = repo / "configs" / "detr_r50_coco.yaml"
    proc = subprocess.run([sys.executable, str(repo / "tools" / "eval.py"), str(config),
                           "--weights", str(tmp_path / "detr.pth"), "--data.root", str(tmp_path / "data"),
                           "--data.num_workers", "0", "--data.val_size", "96", "--data.val_max_size", "128",
                           "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--json-out",
                           str(tmp_path / "ap.json")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("Average Precision") == 6
    assert set(json.loads((tmp_path / "ap.json").read_text())) >= {"AP", "AP50"}
