"""Caption metrics: pycocoevalcap parity, Java-less path, PTB vs Python tokenisation, validation, files.

METEOR starts a Java process that takes about 10 s to load its tables, so the tests that need it share one
:class:`CaptionScorer`; the parity test calls pycocoevalcap's ``Meteor.compute_score`` directly on that scorer's
``Meteor`` instance (the METEOR process keeps no state between evaluations).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vitkit.eval import caption_metrics as cm
from vitkit.eval import ptb_tokenize as ptb
from vitkit.eval.caption_metrics import CaptionScorer, caption_metrics, evaluate_caption_files
from vitkit.eval.ptb_tokenize import java_available, python_ptb_tokenize, tokenize_captions

needs_java = pytest.mark.skipif(not java_available(), reason="needs a Java runtime (METEOR, PTB tokenizer)")

# (caption, what pycocoevalcap's PTBTokenizer made of it on a machine with Java 17)
TYPICAL = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs are playing in the snow .", "two dogs are playing in the snow"),
    ("A plate of food with broccoli, rice and chicken.", "a plate of food with broccoli rice and chicken"),
    ("A black-and-white photo of a train at the station...", "a black-and-white photo of a train at the station"),
    ("The cat's toy is on the kids' bed!", "the cat 's toy is on the kids bed"),
    ("A woman isn't holding her umbrella; it's raining.", "a woman is n't holding her umbrella it 's raining"),
    ('There\'s a "STOP" sign at the corner of 5th St. and Main.',
     "there 's a stop sign at the corner of 5th st. and main"),
    ("A giraffe (very tall) stands next to a tree.", "a giraffe -lrb- very tall -rrb- stands next to a tree"),
    ("A clock tower that reads 3:30 p.m. in the U.S.", "a clock tower that reads 3:30 p.m. in the u.s."),
    ("1,000 birds sitting on 3 wires - amazing", "1,000 birds sitting on 3 wires amazing"),
    ("A pizza with pepperoni & cheese costs $5.50?", "a pizza with pepperoni & cheese costs $ 5.50"),
    ("Is this a 50% off sale?!", "is this a 50 % off sale ?!"),
    ("A   man    with extra   spaces\tand a tab", "a man with extra spaces and a tab"),
    ("People can't wait; they're hungry, aren't they?", "people ca n't wait they 're hungry are n't they"),
    ("A dog\u2019s bowl with \u2018quotes\u2019 and \u201cmore quotes\u201d",
     "a dog 's bowl with quotes and more quotes"),
    ("A person on skis -- going fast", "a person on skis going fast"),
    ("Two-year-old boy in a T-shirt eating a hot dog", "two-year-old boy in a t-shirt eating a hot dog"),
    ("A bus, a car, and a truck on the road", "a bus a car and a truck on the road"),
    ("A man and his dogs' leashes.", "a man and his dogs leashes"),
    ("We've got two cakes, I'm sure", "we 've got two cakes i 'm sure"),
    ("A sign that says 'no parking'", "a sign that says no parking"),
    ("An elephant [in a zoo] with {brackets}", "an elephant -lsb- in a zoo -rsb- with -lcb- brackets -rcb-"),
    ("Wow!!! A huge cake.", "wow !!! a huge cake"),
    ("cannot see the sign: it's gonna rain", "can not see the sign it 's gon na rain"),
    ("Mr. Smith and Dr. Jones at the beach, etc.", "mr. smith and dr. jones at the beach etc."),
    ("", ""),
    ("...", ""),
]

GTS: dict[Any, list[str]] = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave in the ocean.",
        "A person surfing on a large wave."],
    2: ["Two dogs play together in the snow.", "A pair of dogs running through deep snow.",
        "Two brown dogs are playing outside in the snow."],
    "img3": ["A plate of food with broccoli and rice.", "Rice, chicken and vegetables on a white plate.",
             "A white plate topped with rice and broccoli."],
    4: ["A red double decker bus driving down a street.", "A city bus on a busy road.",
        "A large red bus drives past some buildings."],
}
BETTER = {1: "A man riding a big wave on a surfboard.", 2: "Two dogs playing in the snow.",
          "img3": "A white plate with rice and broccoli.", 4: "A red bus driving down a city street."}
WORSE = {1: "A bird sitting on a wooden fence.", 2: "A cat sleeping on a couch.",
         "img3": "A man holding a tennis racket.", 4: "A kitchen with a white refrigerator."}


pytestmark = pytest.mark.filterwarnings("ignore:METEOR skipped")  # tests that check the warning record it anyway


@pytest.fixture(scope="module")
def java_scorer() -> Iterator[CaptionScorer]:
    if not java_available():
        pytest.skip("needs a Java runtime (METEOR, PTB tokenizer)")
    with CaptionScorer(java=True) as scorer:
        yield scorer


@pytest.fixture
def fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which one-per-process messages were given, so each test sees its own."""
    monkeypatch.setattr(cm, "_NOTIFIED", set())


# --------------------------------------------------------------------------------------------- tokenisation


def test_python_tokenizer_matches_recorded_ptb_output() -> None:
    for caption, expected in TYPICAL:
        assert python_ptb_tokenize(caption) == expected, caption


@needs_java
def test_ptb_and_python_tokenizer_agree_on_typical_captions() -> None:
    captions = [caption for caption, _ in TYPICAL]
    ptb = tokenize_captions(captions, java=True)
    assert ptb == [expected for _, expected in TYPICAL]
    assert ptb == [python_ptb_tokenize(c) for c in captions]


def test_failing_java_tokenizer_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(captions: list[str]) -> list[str]:
        raise PermissionError("read-only package folder")

    monkeypatch.setattr(ptb, "_java_ptb_tokenize", broken)
    with pytest.warns(UserWarning, match="read-only package folder"):
        out = tokenize_captions(["A dog's bowl.", ""], java=True)
    assert out == ["a dog 's bowl", ""]


# --------------------------------------------------------------------------------------------- metrics


def test_identical_captions_score_top_marks() -> None:
    gts = {image_id: [refs[0]] * 3 for image_id, refs in GTS.items()}
    res = {image_id: refs[0] for image_id, refs in GTS.items()}
    scores = caption_metrics(gts, res, java=False)
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0)  # cosine 1 at every n, no length penalty, x10


def test_bleu_equals_the_hand_computed_value() -> None:
    # One reference "the cat sat on the mat", candidate "the cat sat on a mat" (6 words each, brevity penalty 1).
    # Clipped n-gram precisions: 1-grams 5/6 (the, cat, sat, on, mat), 2-grams 3/5 (the cat, cat sat, sat on),
    # 3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3 (the cat sat on). BLEU-n is their geometric mean.
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    expected = [math.prod(p[:n]) ** (1 / n) for n in range(1, 5)]  # 0.8333, 0.7071, 0.6300, 0.5373
    got = caption_metrics({1: ["The cat sat on the mat."]}, {1: "the cat sat on a mat"}, java=False)
    for n in range(4):
        assert got[f"Bleu_{n + 1}"] == pytest.approx(expected[n], abs=1e-6), n + 1
    # A 3-word candidate against the 6-word reference: every 1..3-gram matches, brevity penalty exp(1 - 6/3).
    got = caption_metrics({1: ["the cat sat on the mat"]}, {1: "the cat sat"}, java=False)
    for n in range(3):
        assert got[f"Bleu_{n + 1}"] == pytest.approx(math.exp(-1), abs=1e-6), n + 1
    # No 4-gram at all: pycocoevalcap's precision is (0 + 1e-15) / (0 + 1e-9), so BLEU-4 is small but not 0.
    assert got["Bleu_4"] == pytest.approx(math.exp(-1) * 1e-6 ** 0.25, rel=1e-6)


@pytest.mark.slow  # Java scorers on several captions: the full suite runs it
def test_better_caption_beats_worse_on_every_metric(java_scorer: CaptionScorer) -> None:
    better, worse = java_scorer(GTS, BETTER), java_scorer(GTS, WORSE)
    assert list(better) == list(cm.METRIC_KEYS)
    for key in cm.METRIC_KEYS:
        assert better[key] > worse[key], key


def test_numbers_equal_pycocoevalcap_scorers(java_scorer: CaptionScorer) -> None:
    res = {**BETTER, "img3": ""}  # an empty candidate is allowed
    ours = java_scorer(GTS, res)
    direct_meteor = java_scorer._meteor
    assert isinstance(direct_meteor, Meteor)
    # what COCOEvalCap does: PTB-tokenise references and candidates, then each scorer on the same dicts
    tokenizer = PTBTokenizer()
    gts_tok = tokenizer.tokenize({i: [{"caption": c} for c in GTS[i]] for i in res})
    res_tok = tokenizer.tokenize({i: [{"caption": c}] for i, c in res.items() if c})
    res_tok["img3"] = [""]
    res_tok = {i: res_tok[i] for i in res}
    bleu, _ = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)
    expected = {f"Bleu_{n + 1}": b for n, b in enumerate(bleu)}
    expected["METEOR"] = direct_meteor.compute_score(gts_tok, res_tok)[0]
    expected["ROUGE_L"] = Rouge().compute_score(gts_tok, res_tok)[0]
    expected["CIDEr"] = Cider().compute_score(gts_tok, res_tok)[0]
    assert ours == expected  # same tokens, same scorers, same order: bit-identical
    assert 0 < ours["METEOR"] < 1 and ours["CIDEr"] > 0


def test_without_java_meteor_is_left_out_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                         fresh_notices: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = caption_metrics(GTS, BETTER, java=False)
        second = caption_metrics(GTS, WORSE, java=False)
    meteor_warnings = [str(w.message) for w in caught if "METEOR" in str(w.message)]
    assert len(meteor_warnings) == 1, meteor_warnings
    assert "Java" in meteor_warnings[0] and "JRE 8" in meteor_warnings[0]
    assert "METEOR" not in first and "METEOR" not in second
    assert set(first) == set(cm.METRIC_KEYS) - {"METEOR"}

    monkeypatch.setattr(cm, "_NOTIFIED", set())
    monkeypatch.setattr(ptb.shutil, "which", lambda name: None)  # a machine without java on PATH
    with pytest.warns(UserWarning, match="METEOR skipped: Java was not found on PATH"):
        scores = caption_metrics(GTS, BETTER)
    assert "METEOR" not in scores
    assert scores == first  # the Python tokenizer gives the same tokens on these captions


class _DeadMeteor(Meteor):
    """A METEOR whose process has died, as a JVM that cannot reserve its heap does (no Java needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.meteor_p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('no heap'); exit(1)"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.meteor_p.wait()


def test_failing_meteor_is_left_out_and_the_rest_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cm, "Meteor", _DeadMeteor)
    monkeypatch.setattr(cm, "tokenize_captions", lambda captions, java=None: [python_ptb_tokenize(c) for c in captions])
    with pytest.warns(UserWarning, match="METEOR skipped: the METEOR Java process failed.*no heap"):
        scores = caption_metrics(GTS, BETTER, java=True)
    assert "METEOR" not in scores
    assert scores == caption_metrics(GTS, BETTER, java=False)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*not in gts"):
        caption_metrics(GTS, {"nope": "a caption"}, java=False)
    with pytest.raises(ValueError, match=r"'1' is there"):
        caption_metrics({"1": ["a dog"]}, {1: "a dog"}, java=False)
    with pytest.raises(ValueError, match=r"gts\[5\] has no reference"):
        caption_metrics({**GTS, 5: []}, BETTER, java=False)
    with pytest.raises(ValueError, match="res is empty"):
        caption_metrics(GTS, {}, java=False)
    with pytest.raises(TypeError, match=r"res\[1\] must be one caption string"):
        caption_metrics(GTS, {1: ["a list"]}, java=False)
    with pytest.raises(TypeError, match=r"gts\[1\] must be a list"):
        caption_metrics({1: "a dog"}, {1: "a dog"}, java=False)
    # empty captions are fine; images missing from res are simply not evaluated
    scores = caption_metrics(GTS, {1: "", 2: "Two dogs in the snow."}, java=False)
    assert scores["Bleu_1"] > 0


# --------------------------------------------------------------------------------------------- files


def _write_gt(path: Path) -> Path:
    images, annotations = [], []
    for image_id, refs in GTS.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 10, "width": 10})
        for ref in refs:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": ref})
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_evaluate_caption_files_matches_caption_metrics(tmp_path: Path) -> None:
    gt = _write_gt(tmp_path / "captions_val2017.json")
    subset = {1: BETTER[1], "img3": BETTER["img3"]}  # only the images in the results file are evaluated
    results = _write(tmp_path / "results.json", [{"image_id": i, "caption": c} for i, c in subset.items()])
    scores = evaluate_caption_files(gt, results, java=False)
    assert scores == caption_metrics({i: GTS[i] for i in subset}, subset, java=False)
    assert scores != caption_metrics(GTS, BETTER, java=False)


def test_evaluate_caption_files_errors_name_the_file(tmp_path: Path) -> None:
    gt = _write_gt(tmp_path / "gt.json")
    good = [{"image_id": 1, "caption": "a surfer"}]
    results = _write(tmp_path / "results.json", good)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        evaluate_caption_files(broken, results, java=False)
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        evaluate_caption_files(gt, broken, java=False)
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        evaluate_caption_files(tmp_path / "absent.json", results, java=False)
    with pytest.raises(ValueError, match=r"noann\.json has no 'annotations'"):
        evaluate_caption_files(_write(tmp_path / "noann.json", {"images": []}), results, java=False)
    instances = _write(tmp_path / "instances.json", {"images": [{"id": 1}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(ValueError, match=r"instances\.json: annotation 0 needs 'image_id' and 'caption'"):
        evaluate_caption_files(instances, results, java=False)
    regions = _write(tmp_path / "regions.json", {"images": [{"id": 1}], "annotations": [  # region captions
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "caption": "a red square"}]})
    with pytest.raises(ValueError, match=r"regions\.json: annotation 0 needs .* \(and no 'bbox'\)"):
        evaluate_caption_files(regions, results, java=False)

    def bad_results(obj: Any) -> Path:
        return _write(tmp_path / "bad_results.json", obj)

    with pytest.raises(ValueError, match=r"bad_results\.json must be a JSON list"):
        evaluate_caption_files(gt, bad_results({"image_id": 1, "caption": "x"}), java=False)
    with pytest.raises(ValueError, match=r"bad_results\.json holds no results"):
        evaluate_caption_files(gt, bad_results([]), java=False)
    with pytest.raises(ValueError, match=r"bad_results\.json: result 1 needs 'image_id' and 'caption'"):
        evaluate_caption_files(gt, bad_results([*good, {"image_id": 2}]), java=False)
    with pytest.raises(ValueError, match=r"bad_results\.json: image id 1 has more than one result"):
        evaluate_caption_files(gt, bad_results([*good, {"image_id": 1, "caption": "again"}]), java=False)
    with pytest.raises(ValueError, match=r"bad_results\.json: 1 image id\(s\) have no reference captions in .*gt"):
        evaluate_caption_files(gt, bad_results([*good, {"image_id": 99, "caption": "x"}]), java=False)
    with pytest.raises(ValueError, match=r"\['2'\] \(2 is there: image ids must match in type too\)"):
        evaluate_caption_files(gt, bad_results([{"image_id": "2", "caption": "x"}]), java=False)
