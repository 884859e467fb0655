"""Export a training checkpoint for deployment, as an ONNX graph or weights-only safetensors: ``vitkit export``
(``tools/export.py``).

    vitkit export CKPT --format onnx|safetensors [--dynamic] [--out PATH] [--opset N]
        [--batch B] [--size H W] [--no-check]

--format onnx, detection checkpoint: images -> detections, post-processing included.
    inputs   images (B, 3, H, W) float32, resized (short side = the checkpoint's val_size, long side <= val_max_size),
             ImageNet-normalised, zero-padded bottom/right; mask (B, H, W) bool, True = padding;
             orig_sizes (B, 2) int64 [h, w] of the original images
    outputs  boxes (B, K, 4) float32 xyxy pixels of the original images; scores (B, K); labels (B, K) int64
             contiguous labels (the graph's metadata holds class_names and label_to_cat_id)
--format onnx, captioning checkpoint: the caption encoder only.
    inputs   images, mask as above
    outputs  memory (B, N, D), memory_mask (B, N) bool True = padding, memory_pos (B, N, D)
--format onnx, describe checkpoint: its detector only (default out <stem>.detector.onnx).
--format safetensors: the weights, with config, inference settings and tokenizer as metadata.

Without --dynamic the graph takes exactly --batch x --size (default: 1 x the longest preprocessed side, squared).
Exit status: 0 exported, 1 exported but the check exceeded 1e-3, 2 usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitkit.cli.common import command_parser, fail, folder_usage_error, positive

if TYPE_CHECKING:
    from vitkit.io.export import ExportReport

PROG = "vitkit export"
TOLERANCE = 1e-3
EXAMPLES = """Detector: images -> boxes/scores/labels with post-processing. Captioner: the encoder only; decoding stays
in PyTorch (vitkit.io.export.decode_memory). Region captioner (describe): the detector only; the region caption head
is not exported to ONNX. Exit status: 0 ok, 1 check over 1e-3, 2 usage error.

examples:
  {prog} runs/detr_shapes/checkpoints/last.ckpt                      # static graph, last.onnx beside it
  {prog} last.ckpt --format onnx --dynamic --out detr.onnx           # any batch and image size
  {prog} last.ckpt --format safetensors                              # weights + config, for vitkit.load"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``export``."""
    parser = command_parser(prog, __doc__, EXAMPLES)
    parser.add_argument("ckpt", help="training checkpoint (.ckpt written by vitkit train / tools/train.py)")
    parser.add_argument("--format", choices=("onnx", "safetensors"), default="onnx", help="default: onnx")
    parser.add_argument("--out", help="output file (default: next to CKPT, <stem>.onnx, <stem>.encoder.onnx for a "
                                      "captioner, <stem>.detector.onnx for a region captioner, or "
                                      "<stem>.safetensors)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 16 (default: 17)")
    parser.add_argument("--batch", type=positive, default=None, help="ONNX: batch of the traced (static) graph "
                                                                      "(default: 1)")
    parser.add_argument("--size", type=positive, nargs=2, metavar=("H", "W"),
                        help="ONNX: image size of the traced (static) graph (default: max_size x max_size of the "
                             "checkpoint's preprocessing)")
    parser.add_argument("--no-check", action="store_true", help="ONNX: skip the onnxruntime parity check")
    return parser


def _onnx_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ONNX options given on the command line (those left out take export_checkpoint's defaults)."""
    return {k: v for k, v in (("dynamic", args.dynamic or None), ("opset", args.opset), ("batch", args.batch),
                              ("size", tuple(args.size) if args.size else None),
                              ("check", False if args.no_check else None)) if v is not None}


def _report(report: ExportReport, prog: str) -> int:
    """Print what was written and the check's differences; 1 when they exceed :data:`TOLERANCE`, else 0."""
    describe = "detector of a region captioner" if report.format == "onnx" else "region captioner"
    named = {"detection": "detector", "captioning": "caption encoder", "describe": describe}  # the shipped tasks'
    what = named.get(report.task, f"{report.task} model")
    if report.format == "onnx":
        B, H, W = report.trace_shape
        shape = "dynamic batch/height/width" if report.dynamic else f"static {B}x3x{H}x{W}"
        print(f"wrote {report.path} ({what}, {shape}; inputs {', '.join(report.inputs)}; outputs "
              f"{', '.join(report.outputs)})")
    else:
        print(f"wrote {report.path} ({what} weights + config; vitkit.io.export.load_safetensors rebuilds it)")
    for note in report.notes:
        print(f"{prog}: note: {note}")
    worst = 0.0
    for shape, diffs in report.checks.items():
        relevant = {k: v for k, v in diffs.items() if k != "boxes_px"}
        worst = max(worst, *relevant.values())
        print(f"onnxruntime vs vitkit eager at {shape}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if worst > TOLERANCE:
        print(f"{prog}: warning: the onnxruntime check differs by {worst:.2e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Export the checkpoint and print what was written: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    from vitkit.io.export import export_checkpoint  # heavy: imported after parsing so --help stays fast

    ckpt = Path(args.ckpt)
    error = folder_usage_error(None, ckpt, {})
    if error is not None:
        return fail(prog, error)
    onnx_options = _onnx_options(args)
    if args.format == "safetensors" and onnx_options:
        return fail(prog, f"--{'/--'.join(sorted(onnx_options))} apply to --format onnx only")
    try:
        report = export_checkpoint(ckpt, args.format, args.out, **onnx_options)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as err:
        return fail(prog, str(err))
    except OSError as err:
        return fail(prog, f"{err.filename or args.out}: {err.strerror or err}")
    return _report(report, prog)
