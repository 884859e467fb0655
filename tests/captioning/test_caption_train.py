"""Captioning training as a user runs it: tools/train.py on a caption config, the checkpoint it writes, the
tokenizer links, validation metrics, and config errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import vitkit
from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.captioning.datamodule import CaptionDataModule, swap_left_right
from vitkit.captioning.module import CaptionModule
from vitkit.utils.config import instantiate
from vitkit.utils.spec import SPEC_KEY, InferenceSpec, write_spec

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "caption_shapes.yaml"
ENC = "--model.captioner.init_args.encoder.init_args."
DEC = "--model.captioner.init_args.decoder.init_args."
TINY = [ENC + "stem_channels", "[8, 16]", ENC + "stem_depths", "[0, 0]", ENC + "embed_dim", "32", ENC + "depth", "1",
        ENC + "num_heads", "2",
        DEC + "dim", "32", DEC + "depth", "1", DEC + "num_heads", "2",
        "--data.shapes_train", "16", "--data.shapes_val", "4", "--data.num_workers", "0", "--data.batch_size", "8",
        "--data.train_size", "96", "--data.val_size", "96", "--data.max_size", "160",
        "--model.java", "false", "--model.val_beams", "1", "--trainer.precision", "32",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", "--trainer.limit_train_batches", "2"]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny captioning run (2 epochs of 2 steps, 16 generated images, 4 for validation)."""
    work = tmp_path_factory.mktemp("caption")
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(work / "data"),
                 "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", *TINY], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val (4 images): Bleu_1" in proc.stdout and "CIDEr" in proc.stdout
    return work


def test_train_writes_checkpoint_with_config_and_tokenizer(trained, one_thread):
    run = trained / "runs" / "caption_shapes"
    assert (run / "version_0" / "config.yaml").is_file()
    metrics = (run / "version_0" / "metrics.csv").read_text()
    assert "val/CIDEr" in metrics and "val/Bleu_4" in metrics and "train/loss" in metrics
    assert any(p.name.startswith("epoch00") and "-cider" in p.name for p in (run / "checkpoints").iterdir())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)

    spec = ckpt[SPEC_KEY]
    config = spec["model_config"]
    assert config["class_path"] == "vitkit.captioning.Captioner"
    assert config["init_args"]["encoder"]["class_path"] == "vitkit.core.ViTEncoder"
    assert ckpt["datamodule_hyper_parameters"]["val_size"] == 96
    assert ckpt["datamodule_hyper_parameters"]["max_size"] == 160
    assert (spec["task"], spec["size"], spec["max_size"]) == ("captioning", 96, 160)  # the spec records them too

    # The tokenizer is linked: model vocabulary and special ids = the tokenizer's, also in the run folder's copy.
    tok = CaptionTokenizer.from_str(spec["tokenizer"])
    assert CaptionTokenizer.from_file(run / "version_0" / "tokenizer.json").to_str() == tok.to_str()
    args = config["init_args"]
    assert (args["vocab_size"], args["pad_id"], args["bos_id"], args["eos_id"]) == \
        (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    assert args["max_length"] == 32
    assert ckpt["state_dict"]["captioner.token_embed.weight"].shape[0] == tok.vocab_size

    # Rebuilt from the checkpoint alone, the captioner reproduces the run's last validation captions: each written
    # caption is its greedy path (up to float ties: a barely trained model has near-equal logits).
    model = instantiate(config, Captioner)
    state = {k[len("captioner."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("captioner.")}
    model.load_state_dict(state)
    model.eval()
    dm = CaptionDataModule(**{k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if k[0] != "_"})
    dm.setup("validate")
    images, mask, _, image_ids = next(iter(dm.val_dataloader()))
    written = {r["image_id"]: r["caption"] for r in json.loads((run / "version_0" / "val_captions.json").read_text())}
    assert sorted(written) == sorted(image_ids)
    for k, image_id in enumerate(image_ids):
        words = tok.encode(written[image_id])
        path = [tok.bos_id, *words] + ([tok.eos_id] if len(words) < args["max_length"] - 1 else [])
        tokens = torch.tensor([path])  # (1, T)
        with torch.no_grad():
            logits = model(images[k: k + 1], tokens, mask[k: k + 1])[0, :-1].float()  # (T-1, V)
        chosen = logits.gather(1, tokens[0, 1:, None])[:, 0]  # (T-1,)
        assert (chosen >= logits.max(dim=1).values - 1e-3).all(), (image_id, written[image_id])
    # vitkit.load gives a ready captioning pipeline from the same file.
    pipe = vitkit.load(run / "checkpoints" / "last.ckpt")
    files = sorted((trained / "data" / "val2017").glob("*.jpg"))[:2]
    assert [type(r["caption"]) for r in pipe.caption([str(f) for f in files], method="greedy")] == [str, str]
    # ... and teacher-forced logits agree with a second load through the Lightning module's state dict (which holds
    # the recipe's training-only object head: the pipeline above ignored it).
    hp = ckpt["hyper_parameters"]
    assert hp["object_classes"] == 4 and any(k.startswith("object_head.") for k in ckpt["state_dict"])
    module = CaptionModule(instantiate(config, Captioner), object_classes=hp["object_classes"],
                           object_weight=hp["object_weight"])
    module.load_state_dict(ckpt["state_dict"])
    tokens = tok.encode_batch(["a red circle", "two shapes on a gray background"])  # (2, T)
    with torch.no_grad():
        torch.testing.assert_close(model(images[:2], tokens, mask[:2]), module.eval()(images[:2], tokens, mask[:2]))


def _fake_validation(root: Path, shift: int) -> dict[str, float]:
    """Validate a tiny module whose "generated" caption is the first reference of the image ``shift`` places on."""
    dm = CaptionDataModule(root=str(root), batch_size=2, num_workers=0, train_size=64, val_size=64, max_size=96)
    dm.setup("validate")
    refs = [dm.val_set[i][1][0] for i in range(len(dm.val_set))]
    queue = refs[shift:] + refs[:shift]
    tok = dm.tokenizer
    from vitkit.core import TransformerDecoder, ViTEncoder

    enc = ViTEncoder(patch_size=16, embed_dim=16, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    dec = TransformerDecoder(dim=16, depth=1, num_heads=2, return_intermediate=False)
    module = CaptionModule(Captioner(enc, dec, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
                                     eos_id=tok.eos_id), java=False)

    def fake_generate(images, mask=None):
        out = queue[: images.shape[0]]
        del queue[: images.shape[0]]
        return out

    module.generate = fake_generate
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert module.last_captions == dict(zip(dm.val_set.ids, refs[shift:] + refs[:shift], strict=True))
    return {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def test_validation_metrics_on_reference_captions(trained, one_thread):
    exact = _fake_validation(trained / "data", shift=0)
    assert set(exact) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}  # no METEOR without Java
    assert exact["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and exact["ROUGE_L"] == pytest.approx(1.0)
    assert exact["CIDEr"] > 1.0
    wrong = _fake_validation(trained / "data", shift=1)  # every caption describes another image
    assert wrong["CIDEr"] < exact["CIDEr"] and wrong["Bleu_4"] < exact["Bleu_4"]


def test_unknown_config_key_is_an_error(tmp_path):
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--model.no_such_key", "1"], cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
    assert "Traceback" not in proc.stderr and "Fix:" in proc.stderr  # one paragraph (issue 7)


def test_missing_captions_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"captions_train2017\.json"):
        CaptionDataModule(root=str(tmp_path / "nope"))


def test_checkpoint_tokenizer_replaces_a_retrained_one():
    """Resuming: a re-trained tokenizer may number tokens differently (HF BPE ties); the checkpoint's is used."""
    texts = [f"a {c} {k} at the {p}" for c in ("red", "green") for k in ("square", "star") for p in ("top", "left")]
    ours = CaptionTokenizer.train(texts, vocab_size=40, model="bpe")
    data = json.loads(ours.to_str())
    vocab = data["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i > 3][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same tokens and merges, two ids swapped
    saved = CaptionTokenizer.from_str(json.dumps(data))
    from vitkit.core import TransformerDecoder, ViTEncoder

    enc = ViTEncoder(patch_size=16, embed_dim=16, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    dec = TransformerDecoder(dim=16, depth=1, num_heads=2, return_intermediate=False)
    module = CaptionModule(Captioner(enc, dec, vocab_size=ours.vocab_size))
    module.tokenizer = ours
    config = {"class_path": "vitkit.captioning.Captioner", "init_args": {}}  # not read when resuming

    def checkpoint(tokenizer: CaptionTokenizer) -> dict:
        ckpt: dict = {}
        write_spec(ckpt, InferenceSpec(task="captioning", model_config=config, size=32, max_size=64,
                                       tokenizer=tokenizer.to_str()))
        return ckpt

    module.on_load_checkpoint(checkpoint(saved))
    assert module.tokenizer.to_str() == saved.to_str() != ours.to_str()
    small = CaptionTokenizer.train(texts, vocab_size=30, model="bpe")
    with pytest.raises(ValueError, match="vocab_size"):
        module.on_load_checkpoint(checkpoint(small))


def test_mirroring_swaps_left_and_right():
    assert swap_left_right("a red square at the top left and a star on the Right") == \
        "a red square at the top right and a star on the Left"
    assert swap_left_right("a leftover bright circle") == "a leftover bright circle"


def test_resume_from_last(trained):
    """Runs last in this module: it extends the shared run by one epoch (validated with beam search)."""
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(trained / "data"),
                 "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1", "--ckpt_path", "last",
                 *TINY, "--model.val_beams", "3"], cwd=trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restoring states from the checkpoint" in proc.stderr + proc.stdout
    folder = trained / "runs" / "caption_shapes" / "checkpoints"
    assert not list(folder.glob("last-v*.ckpt"))  # last.ckpt itself is refreshed
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 6  # 2 epochs of 2 steps restored, 1 more trained


def test_scst_switch_trains_on_the_reward_from_its_share_of_steps(tmp_path):
    """model.scst_start 0.5 of 4 steps: 2 cross-entropy steps, then SCST steps that log their CIDEr-D reward."""
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(tmp_path / "data"),
                 "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--model.scst_start", "0.5",
                 "--model.scst_samples", "3", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "runs" / "caption_shapes" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    rewarded = sorted(int(r["step"]) for r in steps if r.get("scst/reward_step"))
    trained = sorted(int(r["step"]) for r in steps if r.get("train/loss_step"))
    assert rewarded == [2, 3] and trained == [0, 1, 2, 3]  # logged at each step (log_every_n_steps 1)


def test_scst_refuses_mirrored_training_images(tmp_path):
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(tmp_path / "data"),
                 "--trainer.max_epochs", "1", "--model.scst_start", "0.5", "--data.hflip_p", "0.5", *TINY],
                cwd=tmp_path)
    assert proc.returncode != 0 and "data.hflip_p 0 with model.scst_start" in proc.stderr


def test_command_line_model_options_beat_a_resumed_checkpoints(trained, tmp_path):
    """--ckpt_path restores the run's hyper-parameters, but --model.* given on the command line win: a cross-entropy
    run continues with SCST from the start of the resumed epochs."""
    shutil.copy(trained / "runs" / "caption_shapes" / "checkpoints" / "last.ckpt", tmp_path / "xe.ckpt")
    epochs = torch.load(tmp_path / "xe.ckpt", weights_only=True)["epoch"] + 2  # (another test may resume it first)
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(trained / "data"),
                 "--trainer.max_epochs", str(epochs), "--trainer.check_val_every_n_epoch", "1",
                 "--model.scst_start", "0",
                 "--model.scst_samples", "2", *TINY, "--ckpt_path", str(tmp_path / "xe.ckpt")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "caption_shapes" / "version_0"
    assert "scst_start: 0" in (run / "hparams.yaml").read_text()
    assert "scst/reward_step" in (run / "metrics.csv").read_text().splitlines()[0]
