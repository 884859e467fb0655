"""Describe training as a user runs it: tools/train.py on describe_shapes.yaml (a tiny model, 2 steps), the
checkpoint's inference spec (both networks, the linked tokenizer values, the tokenizer) and the logged caption loss."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import vitkit
from vitkit.captioning import CaptionTokenizer
from vitkit.describe.predictor import Describer
from vitkit.utils.spec import SPEC_KEY

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "describe_shapes.yaml"
DET = "--model.detector.init_args."
ENC, DEC, TEXT = DET + "encoder.init_args.", DET + "decoder.init_args.", "--model.text.init_args.decoder.init_args."
TINY = [ENC + "stem_channels", "[8, 16, 32, 32]", ENC + "embed_dim", "32", ENC + "depth", "1", ENC + "num_heads", "2",
        DEC + "dim", "32", DEC + "depth", "1", DEC + "num_heads", "2", DET + "num_queries", "10",
        DET + "num_denoising", "10", TEXT + "dim", "32", TEXT + "depth", "1", TEXT + "num_heads", "2",
        "--model.roi_size", "3",
        "--data.shapes_train", "16", "--data.shapes_val", "4", "--data.num_workers", "0", "--data.batch_size", "8",
        "--data.train_scales", "[96]", "--data.train_max_size", "160", "--data.val_size", "96",
        "--data.val_max_size", "160", "--trainer.precision", "32", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1"]


def test_train_writes_a_describe_checkpoint_with_both_networks_and_the_tokenizer(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root",
                           str(tmp_path / "data"), *TINY], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "describe_shapes"
    metrics = (run / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss_caption_step" in metrics and "val/AP" in metrics and "val/describe_mAP" in metrics
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    spec = ckpt[SPEC_KEY]
    assert (spec["task"], spec["size"], spec["max_size"]) == ("describe", 96, 160)
    assert spec["class_names"] == ["square", "circle", "triangle", "star"] and spec["label_to_cat_id"] == [1, 3, 7, 9]
    config = spec["model_config"]
    assert config["roi_size"] == 3 and "conditioning" not in config
    assert config["detector"]["class_path"] == "vitkit.detection.DETR"
    assert config["detector"]["init_args"]["num_classes"] == 4
    text = config["text"]["init_args"]
    assert config["text"]["class_path"] == "vitkit.captioning.Captioner" and text["encoder"] is None

    # The tokenizer is linked: the text decoder's vocabulary and special ids are the tokenizer's, as in its run copy.
    tok = CaptionTokenizer.from_str(spec["tokenizer"])
    assert CaptionTokenizer.from_file(run / "version_0" / "tokenizer.json").to_str() == tok.to_str()
    assert (text["vocab_size"], text["pad_id"], text["bos_id"], text["eos_id"], text["max_length"]) == \
        (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, 16)
    assert ckpt["state_dict"]["head.text.token_embed.weight"].shape[0] == tok.vocab_size

    # vitkit.load builds the describe model of the trained checkpoint: a Describer whose captions are strings.
    describer = vitkit.load(run / "checkpoints" / "last.ckpt")
    assert isinstance(describer, Describer) and describer.class_names == spec["class_names"]
    out = describer.describe(torch.rand(3, 96, 128), threshold=0.0, max_detections=2, num_beams=1)[0]
    assert out["boxes"].shape == (2, 4) and len(out["captions"]) == 2
