"""Export: ONNX graphs checked in onnxruntime against vitkit eager (fp32), safetensors round trips, tools/export.py.

Tiny random models in checkpoints laid out as tools/train.py writes them: a detector with the switches of
configs/detr_shapes.yaml (sigmoid head, box refinement, two-stage selection, denoising, a stride-8 level from the
conv stem, deformable cross-attention), a vanilla softmax-head DETR (global cross-attention, class token, sine
positions on q/k), and a captioner (RoPE encoder).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.tiny_checkpoints import lightning_checkpoint

ort = pytest.importorskip("onnxruntime")

import vitkit  # noqa: E402
from vitkit.captioning import Captioner, CaptionTokenizer  # noqa: E402
from vitkit.captioning.onnx import compare_encoder, decode_memory  # noqa: E402
from vitkit.captioning.spec import checkpoint_spec as caption_spec  # noqa: E402
from vitkit.core.trace import dummy_inputs  # noqa: E402
from vitkit.detection import DETR  # noqa: E402
from vitkit.detection.onnx import compare_detections  # noqa: E402
from vitkit.detection.spec import checkpoint_spec as detection_spec  # noqa: E402
from vitkit.io.export import (  # noqa: E402
    export_checkpoint,
    export_onnx,
    export_safetensors,
    load_safetensors,
    onnx_session,
    read_checkpoint_config,
    require,
    run_onnx,
)
from vitkit.io.load import WeightsMismatchError  # noqa: E402
from vitkit.utils.config import instantiate  # noqa: E402
from vitkit.utils.spec import SPEC_KEY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tools" / "export.py"
TOL = 1e-3


def _encoder(**kw) -> dict:
    args = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, **kw}
    return {"class_path": "vitkit.core.ViTEncoder", "init_args": args}


def _decoder(**kw) -> dict:
    args = {"dim": 32, "depth": 2, "num_heads": 2, **kw}
    return {"class_path": "vitkit.core.TransformerDecoder", "init_args": args}


# configs/detr_shapes.yaml's switches at toy width
SHAPES = {"class_path": "vitkit.detection.DETR", "init_args": {
    "num_classes": 3, "num_queries": 12, "sigmoid_head": True, "box_refine": True, "two_stage": True,
    "num_denoising": 12, "multiscale": True, "cross_attn": "deformable",
    "encoder": _encoder(stem_channels=[8, 8, 16, 16], pos_embed="rope", class_token=False),
    "decoder": _decoder()}}
VANILLA = {"class_path": "vitkit.detection.DETR", "init_args": {
    "num_classes": 4, "num_queries": 9,
    "encoder": _encoder(pos_embed="sine", pos_mode="qk", class_token=True, norm_first=False),
    "decoder": _decoder(norm_first=False)}}
SENTENCES = ["a red square on the left", "a blue circle on the right", "two green triangles", "an empty picture"]
CAPTIONER = {"class_path": "vitkit.captioning.Captioner", "init_args": {
    "encoder": _encoder(pos_embed="rope", class_token=False),
    "decoder": _decoder(depth=1, return_intermediate=False), "max_length": 8}}


def _perturbed(config: dict, base: type, std: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = instantiate(config, base).eval()
    with torch.no_grad():  # random weights large enough that outputs depend on the image
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def _detector_ckpt(path: Path, config: dict, num_select: int) -> Path:
    """The post-processing follows the head: sigmoid (SHAPES) or softmax (VANILLA)."""
    model = _perturbed(config, DETR, 0.1)
    n = config["init_args"]["num_classes"]
    hparams = {"num_select": num_select, "class_names": [f"c{i}" for i in range(n)],
               "label_to_cat_id": [2 * i + 1 for i in range(n)]}
    spec = detection_spec(config, hparams, {"val_size": 64, "val_max_size": 96})
    torch.save(lightning_checkpoint(spec, model), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    tokenizer = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    config = json.loads(json.dumps(CAPTIONER))
    config["init_args"]["vocab_size"] = tokenizer.vocab_size
    captioner = _perturbed(config, Captioner, 0.3)
    spec = caption_spec(config, tokenizer.to_str(), {"val_size": 32, "max_size": 64})
    torch.save(lightning_checkpoint(spec, captioner), root / "caption.ckpt")
    return {"shapes": _detector_ckpt(root / "shapes.ckpt", SHAPES, 20),
            "vanilla": _detector_ckpt(root / "vanilla.ckpt", VANILLA, 100),
            "caption": root / "caption.ckpt"}


def _sizes(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(40, 700, (batch, 2), generator=g)  # (B, 2) original [h, w]


def _eager(det, images, mask, sizes) -> tuple[torch.Tensor, ...]:
    """vitkit's eager path, as Detector.predict runs it: model, then PostProcess per image."""
    with torch.no_grad():
        dets = det.postprocess(det.model(images, mask), sizes)
    return tuple(torch.stack([d[k] for d in dets]) for k in ("boxes", "scores", "labels"))


def _assert_parity(diffs: dict[str, float]) -> None:
    assert diffs["scores"] <= TOL and diffs["boxes"] <= TOL and diffs["labels"] == 0, diffs


def test_shapes_detector_dynamic_export_matches_eager(ckpts, tmp_path):
    det = vitkit.load(ckpts["shapes"])
    path = tmp_path / "shapes.onnx"
    report = export_onnx(det, path, dynamic=True, batch=2, size=(80, 96), check=False)
    assert report.inputs == ["images", "mask", "orig_sizes"] and report.outputs == ["boxes", "scores", "labels"]
    import onnx

    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 16
    assert any(n.op_type == "GridSample" for n in graph.graph.node)  # deformable attention is in the graph
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["label_to_cat_id"]) == [1, 3, 5] and meta["vitkit_task"] == "detection"
    session = onnx_session(path)
    # the trace shape, then other batch sizes and image sizes (none a multiple of the patch size)
    for seed, (batch, h, w) in enumerate([(2, 80, 96), (1, 72, 130), (3, 121, 67)]):
        images, mask = dummy_inputs(batch, h, w, 16, seed=seed)
        sizes = _sizes(batch, seed)
        got = run_onnx(session, (images, mask, sizes))
        assert got[0].shape == (batch, 20, 4) and got[2].dtype.name == "int64"
        _assert_parity(compare_detections(_eager(det, images, mask, sizes), got, sizes))


def test_vanilla_softmax_detector_static_export_matches_eager(ckpts, tmp_path):
    det = vitkit.load(ckpts["vanilla"])
    report = export_onnx(det, tmp_path / "vanilla.onnx", batch=2, size=(64, 80))
    assert report.checks["2x64x80"]["labels"] == 0
    images, mask = dummy_inputs(2, 64, 80, 16, seed=3)
    mask[0] = False  # one image unpadded, one padded
    images[0] = torch.randn(3, 64, 80)
    sizes = _sizes(2, 3)
    got = run_onnx(onnx_session(report.path), (images, mask, sizes))
    assert got[1].shape == (2, 9)  # softmax head: K = min(num_select, Q)
    _assert_parity(compare_detections(_eager(det, images, mask, sizes), got, sizes))


def test_caption_encoder_export_matches_eager_and_decodes(ckpts, tmp_path):
    pipe = vitkit.load(ckpts["caption"])
    report = export_onnx(pipe, tmp_path / "enc.onnx", dynamic=True, batch=2, size=(48, 64), check=False)
    assert report.outputs == ["memory", "memory_mask", "memory_pos"]
    session = onnx_session(report.path)
    images, mask = dummy_inputs(3, 50, 83, 16, seed=4)
    got = run_onnx(session, (images, mask))
    with torch.no_grad():
        memory, memory_mask, memory_pos = pipe.captioner.encode(images, mask)
    diffs = compare_encoder((memory, memory_mask, memory_pos), got)
    assert diffs["memory"] <= TOL and diffs["memory_pos"] <= TOL and diffs["memory_mask"] == 0, diffs
    # decoding stays in PyTorch: captions from onnxruntime's memory equal the pipeline's own
    assert [c["caption"] for c in decode_memory(pipe, *got, num_beams=2)] == \
        [c["caption"] for c in pipe.generate(images, mask, num_beams=2)]


@pytest.mark.parametrize("name", ["shapes", "caption"])
def test_safetensors_round_trip_gives_the_same_outputs(ckpts, tmp_path, name):
    report = export_checkpoint(ckpts[name], "safetensors", tmp_path / f"{name}.safetensors")
    original, rebuilt = vitkit.load(ckpts[name]), load_safetensors(report.path)
    assert type(rebuilt) is type(original) and not rebuilt.training
    images, mask = dummy_inputs(2, 64, 80, 16, seed=5)
    if name == "caption":
        assert rebuilt.generate(images, mask) == original.generate(images, mask)
        assert rebuilt.tokenizer.to_str() == original.tokenizer.to_str()
        return
    sizes = _sizes(2, 5)
    for a, b in zip(_eager(original, images, mask, sizes), _eager(rebuilt, images, mask, sizes), strict=True):
        assert torch.equal(a, b)
    assert (rebuilt.class_names, rebuilt.label_to_cat_id) == (original.class_names, original.label_to_cat_id)
    assert (rebuilt.size, rebuilt.max_size, rebuilt.postprocess.sigmoid) == (64, 96, True)


def test_safetensors_without_vitkit_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no vitkit metadata"):
        load_safetensors(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_learned_position_table_is_refused(tmp_path):
    from vitkit.detection import PostProcess
    from vitkit.detection.predictor import Detector

    config = json.loads(json.dumps(VANILLA))
    config["init_args"]["encoder"]["init_args"]["pos_embed"] = "learned"
    det = Detector(instantiate(config, DETR), PostProcess(), size=64, max_size=96)
    with pytest.raises(ValueError, match="pos_embed='learned'"):
        export_onnx(det, tmp_path / "x.onnx")


def test_export_leaves_the_callers_model_unchanged(ckpts, tmp_path):
    """Exports trace and save a copy: the caller's predictor keeps its dtype, mode and weights."""
    for name, size in (("shapes", (80, 96)), ("caption", (48, 64))):
        model = vitkit.load(ckpts[name]).to(torch.float64).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        export_onnx(model, tmp_path / f"{name}.onnx", size=size, check=False)
        _, config = read_checkpoint_config(ckpts[name])
        export_safetensors(model, config, tmp_path / f"{name}.safetensors")
        assert all(m.training for m in model.modules())
        after = model.state_dict()
        assert after.keys() == before.keys()
        assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
        assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_weights_that_do_not_fit_fail_the_same_way_from_a_checkpoint_and_an_export(ckpts, tmp_path):
    """One error type and one message for a shape mismatch, a missing and an unexpected weight, whatever the file."""
    ckpt = torch.load(ckpts["vanilla"], weights_only=True)
    state = ckpt["state_dict"]
    state["detector.class_embed.weight"] = torch.zeros(3, 32)  # the head is (C + 1, D) = (5, 32)
    del state["detector.query_embed.weight"]
    state["detector.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    good = export_checkpoint(ckpts["vanilla"], "safetensors", tmp_path / "good.safetensors").path
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(good), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(good))
    tensors["class_embed.weight"] = torch.zeros(3, 32)
    del tensors["query_embed.weight"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    messages = []
    for path, load in ((tmp_path / "bad.ckpt", vitkit.load), (tmp_path / "bad.safetensors", vitkit.load),
                       (tmp_path / "bad.safetensors", load_safetensors)):
        with pytest.raises(WeightsMismatchError) as err:
            load(path)
        assert str(err.value).startswith(f"{path}: the weights do not fit the DETR built from its spec")
        messages.append(str(err.value).removeprefix(str(path)))
    assert messages[0] == messages[1] == messages[2]
    assert "1 missing: query_embed.weight; 1 unexpected: extra.weight; 1 of another shape: class_embed.weight " \
        "(3, 32) (model (5, 32))" in messages[0]


def _export_main():
    spec = importlib.util.spec_from_file_location("export_tool", EXPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_cli_through_subprocess(ckpts, tmp_path):
    out = tmp_path / "cli" / "det.onnx"
    proc = subprocess.run([sys.executable, str(EXPORT), str(ckpts["shapes"]), "--format", "onnx", "--dynamic",
                           "--size", "80", "96", "--opset", "17", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "dynamic" in proc.stdout
    assert proc.stdout.count("onnxruntime vs vitkit eager") == 2  # trace shape + another shape
    images, mask = dummy_inputs(2, 90, 70, 16, seed=6)
    sizes = _sizes(2, 6)
    got = run_onnx(onnx_session(out), (images, mask, sizes))
    _assert_parity(compare_detections(_eager(vitkit.load(ckpts["shapes"]), images, mask, sizes), got, sizes))


def test_cli_errors_and_default_outputs(ckpts, tmp_path, capsys, monkeypatch):
    main = _export_main()
    assert main([str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    evil = tmp_path / "evil.ckpt"
    torch.save({SPEC_KEY: {"task": "detection", "model_config": SHAPES}, "payload": _Evil()}, evil)
    assert main([str(evil)]) == 2  # refused by vitkit.load (weights_only), before any code in it runs
    captured = capsys.readouterr()
    assert "evil.ckpt" in captured.err and "unpickled code ran" not in captured.out
    assert main([str(ckpts["shapes"]), "--opset", "13", "--no-check", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "opset 13" in capsys.readouterr().err
    assert main([str(ckpts["shapes"]), "--format", "safetensors", "--dynamic"]) == 2
    assert "--format onnx only" in capsys.readouterr().err
    # default output names, next to the checkpoint
    local = tmp_path / "caption.ckpt"
    local.write_bytes(ckpts["caption"].read_bytes())
    assert main([str(local), "--format", "safetensors"]) == 0
    assert local.with_suffix(".safetensors").is_file()
    assert main([str(local), "--size", "48", "64"]) == 0
    assert (tmp_path / "caption.encoder.onnx").is_file()
    assert "caption encoder" in capsys.readouterr().out
    # a missing onnxruntime: a one-line error with the install hint
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"vitkit\[export\]"):
        require("onnxruntime", "checking")
    assert main([str(local)]) == 2
    assert "vitkit[export]" in capsys.readouterr().err
