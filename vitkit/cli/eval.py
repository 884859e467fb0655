"""COCO evaluation from the command line: ``vitkit eval`` (``tools/eval.py``).

    vitkit eval --annotations GT.json --results RES.json [--backend faster|pycocotools] [--json-out FILE]
    vitkit eval CONFIG --ckpt CKPT [--key.sub value ...]
    vitkit eval detr_r50_coco --weights PATH
    vitkit eval --captions-gt captions_val2017.json --captions-results RES.json [--json-out FILE]

Detection prints COCOeval's 12-line summary (--json-out: the 12 stats keyed by vitkit.eval.STAT_KEYS); captions
print BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (--json-out keys Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr). Exit status
2 with a short error for bad input."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from vitkit.cli.common import fail
from vitkit.cli.configs import resolve_config

PROG = "vitkit eval"
BACKENDS = ("faster", "pycocotools")  # vitkit.eval.coco_eval.BACKENDS, named here so --help needs no COCO import
EXAMPLES = """modes: --annotations GT --results RES (a results file) | CONFIG --ckpt CKPT (a checkpoint) |
--captions-gt GT --captions-results RES (caption metrics)

examples:
  {prog} --annotations instances_val2017.json --results dets.json --json-out ap.json
  {prog} detr_shapes --ckpt runs/detr_shapes/checkpoints/last.ckpt --results-out dets.json
  {prog} detr_r50_coco --weights detr-r50-e632da11.pth --data.root data/coco
  {prog} --captions-gt captions_val2017.json --captions-results res.json --no-java"""
CAPTION_METRIC_NAMES = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4",
                        "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr-D"}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser of the three modes (results file, checkpoint, caption metrics)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES.format(prog=prog),
        description="COCO bbox evaluation (COCOeval on the original annotation file) and COCO caption "
                    "metrics (pycocoevalcap).",
    )
    parser.add_argument("config", nargs="?", help="run config (a YAML path or a shipped name), to evaluate a "
                                                  "checkpoint")
    parser.add_argument("--ckpt", help="checkpoint to evaluate with CONFIG ")
    parser.add_argument("--weights", help="official DETR weights (facebookresearch .pth, Hugging Face safetensors/bin "
                                          "or folder) to evaluate with a DETR-R50 CONFIG")
    parser.add_argument("--annotations", help="COCO instances JSON (ground truth), e.g. instances_val2017.json")
    parser.add_argument("--results", help="COCO results JSON: a list of {image_id, category_id, bbox, score}")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="faster",
        help="faster-coco-eval (C++, default) or pycocotools (the reference); same stats to ~1e-16",
    )
    parser.add_argument("--captions-gt", help="COCO captions JSON (references), e.g. captions_val2017.json")
    parser.add_argument("--captions-results", help="caption results JSON: a list of {image_id, caption}")
    parser.add_argument("--no-java", action="store_true",
                        help="caption mode: do not start Java (METEOR skipped, PTB tokenisation approximated)")
    parser.add_argument("--json-out", help="write the stats (12 COCO stats, or the caption metrics) to this JSON file")
    parser.add_argument("--results-out", help="with CONFIG --ckpt: write the detections as a COCO results JSON")
    return parser


def evaluate_results_file(args: argparse.Namespace, prog: str = PROG) -> int:
    """Results mode: evaluate a results JSON against an annotation JSON; print the summary, write --json-out."""
    if args.annotations is None or args.results is None:
        return fail(prog, "give both --annotations GT.json and --results RES.json (or CONFIG --ckpt CKPT)")
    from vitkit.eval.coco_eval import evaluate_coco, load_gt  # heavy: imported after parsing so --help stays fast

    try:
        gt = load_gt(args.annotations, args.backend)
        res = evaluate_coco(gt, args.results, backend=args.backend)
    except (FileNotFoundError, ValueError) as e:
        return fail(prog, str(e))
    print(res.summary)
    return _write_json(res.stats, args.json_out, prog)


def evaluate_captions(args: argparse.Namespace, prog: str = PROG) -> int:
    """Caption mode: score --captions-results against --captions-gt; print the metrics, write --json-out."""
    if args.captions_gt is None or args.captions_results is None:
        return fail(prog, "caption evaluation needs both --captions-gt captions_val2017.json and --captions-results "
                           "RES.json")
    # heavy: imported after parsing so --help stays fast
    from vitkit.eval.caption_metrics import evaluate_caption_files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # e.g. pycocoevalcap's unclosed-file ResourceWarnings
        warnings.simplefilter("always", UserWarning)  # vitkit's notes (METEOR skipped, tokenizer fallback)
        try:
            metrics = evaluate_caption_files(args.captions_gt, args.captions_results,
                                             java=False if args.no_java else None)
        except (FileNotFoundError, ValueError, TypeError) as e:
            return fail(prog, str(e))
    for w in caught:  # e.g. METEOR skipped for want of Java: one line each, no source location
        if not (args.no_java and "METEOR skipped" in str(w.message)):
            print(f"{prog}: warning: {w.message}", file=sys.stderr)
    skipped = "skipped (--no-java)" if args.no_java else "skipped (see the warning on stderr)"
    for key, name in CAPTION_METRIC_NAMES.items():
        print(f"{name:<8} {f'{metrics[key]:.4f}' if key in metrics else skipped}")
    return _write_json(metrics, args.json_out, prog)


def evaluate_checkpoint(args: argparse.Namespace, overrides: list[str], prog: str = PROG) -> int:
    """Checkpoint mode: evaluate CONFIG + --ckpt (or --weights) on the config's validation split; print the summary,
    write --json-out and --results-out."""
    source = args.weights if args.weights is not None else args.ckpt
    if args.config is None or source is None or (args.ckpt and args.weights):
        return fail(prog, "evaluating a checkpoint needs CONFIG and one of --ckpt CKPT or --weights WEIGHTS")
    # heavy: imported after parsing so --help stays fast
    from vitkit.cli.validate import validate_checkpoint, validate_weights
    from vitkit.training.guards import ConfigError
    from vitkit.utils.checkpoints import CheckpointError

    try:
        config = resolve_config(args.config)
    except ConfigError as e:
        return fail(prog, str(e))
    if not Path(source).exists():
        return fail(prog, f"file not found: {source}")
    overrides = [*overrides, "--model.eval_backend", args.backend]
    validate = validate_weights if args.weights is not None else validate_checkpoint
    try:
        res, results, is_rank_zero = validate(config, source, overrides)
    except (ConfigError, CheckpointError) as e:  # a refused or unreadable checkpoint, or one that does not fit
        return fail(prog, str(e))
    if not is_rank_zero:
        return 0
    print(res.summary)
    if args.results_out and _write_json(results, args.results_out, prog):
        return 2
    return _write_json(res.stats, args.json_out, prog)


def _write_json(stats: Any, json_out: str | None, prog: str) -> int:
    if json_out:
        out = Path(json_out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(stats, indent=2) + "\n")
        except OSError as e:
            return fail(prog, f"cannot write {out}: {e.strerror or e}")
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the mode the arguments choose (``argv`` default ``sys.argv[1:]``; unknown ``--key.sub value`` pairs are
    config overrides in checkpoint mode).

    Returns:
        The exit status: 0 done, 2 bad input."""
    args, overrides = build_parser(prog).parse_known_args(argv)
    if args.captions_gt is not None or args.captions_results is not None:
        others = [flag for flag, value in (("CONFIG", args.config), ("--ckpt", args.ckpt),
                                           ("--weights", args.weights), ("--annotations", args.annotations),
                                           ("--results", args.results))
                  if value is not None]
        if others or overrides:
            return fail(prog, f"caption evaluation (--captions-gt/--captions-results) does not take "
                               f"{', '.join(others + overrides)}; run one mode at a time")
        return evaluate_captions(args, prog)
    if args.config is not None or args.ckpt is not None or args.weights is not None:
        return evaluate_checkpoint(args, overrides, prog)
    if overrides:
        return fail(prog, f"unrecognized arguments: {' '.join(overrides)}")
    return evaluate_results_file(args, prog)
