"""ONNX Runtime against vitkit eager: detector inference time on the configs/detr_shapes.yaml architecture (CPU).

    python benchmarks/onnx_speed.py [--ckpt CKPT] [--threads N] [--reps 15] [--warmup 3] [--json-out PATH]

The detector of ``configs/detr_shapes.yaml`` (conv stem + 4-layer ViT-128 with RoPE, stride-8/16 memory,
deformable cross-attention, two-stage selection, sigmoid head, 100 queries; random weights, or ``--ckpt``'s) is
exported once with ``vitkit.io.export.export_onnx(dynamic=True)`` (post-processing included) and timed, images ->
boxes/scores/labels, on two inputs: 1 x 3 x 192 x 256 (unpadded) and 4 x 3 x 192 x 256 (the last image with
padding bottom/right, as in a batch of mixed aspect ratios). Variants, all under ``torch.inference_mode``:

- ``eager_fp32``: vitkit eager, fp32 (the same wrapper that is exported: padding to the patch size, DETR,
  ``PostProcess.batched``);
- ``eager_bf16``: the same under ``torch.autocast("cpu", torch.bfloat16)`` (vitkit's mixed-precision path);
- ``eager_levers``: the detector as ``tools/detect.py`` runs it (``Detector.set_precision("auto")``: bf16 where the
  CPU is fast at it, with frozen BatchNorm folded and linear weights prepacked; fp32 with prepacked weights
  elsewhere), network then ``PostProcess.batched``;
- ``ort_fp32``: onnxruntime ``CPUExecutionProvider``, graph optimisations on (the default), fp32.

Same thread count for all: ``torch.set_num_threads(N)`` and ``SessionOptions.intra_op_num_threads = N`` (inter-op
1); idle threads sleep on both sides (``OMP_WAIT_POLICY=PASSIVE`` unless set, onnxruntime ``allow_spinning=0``
unless ``--ort-spin``). Each variant is warmed up, then the variants run interleaved (every repetition runs each
once, back to back, so a change in machine load hits them alike); the median over repetitions is reported with every
repetition's time.
Ratios are ``ort / eager`` times (below 1: onnxruntime is faster). Numbers from a shared, busy CPU vary; compare
ratios from the same run only. Needs ``pip install 'vitkit[export]'``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads OpenMP; an OMP_WAIT_POLICY in the
# environment wins). On a shared CPU, spinning threads that get preempted make torch's multi-threaded eager runs
# 5-30x slower and erratic; this is the counterpart of onnxruntime's allow_spinning=0 below, so both runtimes wait
# the same way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "configs" / "detr_shapes.yaml"
NUM_CLASSES = 4  # the generated shapes set's categories


def build_detector(ckpt: str | None):
    """The shapes detector (a :class:`vitkit.detection.predictor.Detector`): ``ckpt``'s, or the YAML's with
    random weights."""
    import vitkit
    from vitkit.detection import DETR
    from vitkit.io.load import build_predictor
    from vitkit.utils.config import instantiate
    from vitkit.utils.spec import InferenceSpec

    if ckpt:
        return vitkit.load(ckpt)
    recipe = yaml.safe_load(SHAPES_CONFIG.read_text())
    config = recipe["model"]["detector"]
    config["init_args"]["num_classes"] = NUM_CLASSES
    torch.manual_seed(0)
    model = instantiate(config, DETR)
    with torch.no_grad():  # break the zero / constant inits so every branch does real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    spec = InferenceSpec(task="detection", model_config=config, size=recipe["data"]["val_size"],
                         max_size=recipe["data"]["val_max_size"], num_select=recipe["model"]["num_select"])
    return build_predictor(spec, model.state_dict(), "random weights")  # the predictor vitkit.load would build


def inputs(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if batch > 1:
        mask[-1, height * 3 // 4:] = True
        mask[-1, :, width * 2 // 3:] = True
    sizes = torch.tensor([[height * 2, width * 2]] * batch)  # (B, 2) original [h, w]
    return images.masked_fill(mask[:, None], 0.0), mask, sizes


def time_interleaved(variants: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    """Warm every variant up, then time ``reps`` interleaved rounds; seconds per call, per variant."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a detection checkpoint to time instead of the random-weight shapes detector")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch and onnxruntime intra-op threads (default: torch's current setting)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per variant first")
    parser.add_argument("--shapes", default="1x192x256,4x192x256", help="comma-separated BxHxW inputs")
    parser.add_argument("--ort-spin", action=argparse.BooleanOptionalAction, default=False,
                        help="onnxruntime pool threads busy-wait between ops (its default; off here by default: "
                             "with interleaved timing, threads still spinning after an onnxruntime run slow the "
                             "next eager run down)")
    parser.add_argument("--json-out", help="write the records here as JSON")
    parser.add_argument("--note", default="", help="a line on the conditions of this run, kept in the JSON")
    args = parser.parse_args(argv)

    from vitkit.detection.onnx import DetectorExport, compare_detections
    from vitkit.io.export import export_onnx, onnx_session, run_onnx

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    det = build_detector(args.ckpt)
    wrapper = DetectorExport(det.model, det.postprocess).eval()
    levers = copy.deepcopy(det).set_precision("auto")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detector.onnx"
        start = time.perf_counter()
        export_onnx(det, path, dynamic=True, size=(192, 256), batch=2, check=False)
        export_s = time.perf_counter() - start
        session = onnx_session(path, threads=args.threads, spin=args.ort_spin)
        records = []
        for shape in args.shapes.split(","):
            B, H, W = (int(v) for v in shape.lower().split("x"))
            x = inputs(B, H, W)

            def eager(x=x):
                with torch.inference_mode():
                    return wrapper(*x)

            def eager_bf16(x=x):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return wrapper(*x)

            def eager_levers(x=x):
                with torch.inference_mode():
                    out = levers.run(x[0], x[1])
                    return levers.postprocess.batched(out["pred_logits"], out["pred_boxes"], x[2])

            def ort(x=x):
                return run_onnx(session, x)

            parity = compare_detections(eager(), ort(), x[2])
            times = time_interleaved({"eager_fp32": eager, "eager_bf16": eager_bf16, "eager_levers": eager_levers,
                                      "ort_fp32": ort}, args.reps, args.warmup)
            med = {k: statistics.median(v) for k, v in times.items()}
            best_eager = min(("eager_fp32", "eager_bf16", "eager_levers"), key=med.get)
            rec = {"input": f"{B}x3x{H}x{W}", "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                   "ratio_ort_vs_eager_fp32": round(med["ort_fp32"] / med["eager_fp32"], 3),
                   "ratio_ort_vs_eager_bf16": round(med["ort_fp32"] / med["eager_bf16"], 3),
                   "ratio_ort_vs_eager_levers": round(med["ort_fp32"] / med["eager_levers"], 3),
                   "faster_eager": best_eager, "ratio_ort_vs_faster_eager": round(med["ort_fp32"] / med[best_eager], 3),
                   "parity_ort_vs_eager_fp32": parity, "times_ms": {k: [round(t * 1e3, 2) for t in v]
                                                                    for k, v in times.items()}}
            records.append(rec)
            print(f"{rec['input']}: eager fp32 {rec['median_ms']['eager_fp32']:.1f} ms, eager bf16 autocast "
                  f"{rec['median_ms']['eager_bf16']:.1f} ms, eager levers {rec['median_ms']['eager_levers']:.1f} ms, "
                  f"onnxruntime fp32 {rec['median_ms']['ort_fp32']:.1f} ms; "
                  f"ort/eager fp32 = {rec['ratio_ort_vs_eager_fp32']:.2f}, ort/eager bf16 = "
                  f"{rec['ratio_ort_vs_eager_bf16']:.2f}, ort/eager levers = {rec['ratio_ort_vs_eager_levers']:.2f} "
                  f"(median of {args.reps}; parity scores "
                  f"{parity['scores']:.1e}, boxes {parity['boxes']:.1e})")
    import onnxruntime

    result = {"benchmark": "onnx_speed", "model": args.ckpt or f"{SHAPES_CONFIG.name} (random weights)",
              "threads": args.threads, "ort_spin": args.ort_spin, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "reps": args.reps, "warmup": args.warmup, "export_s": round(export_s, 2),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
              "processor": platform.processor(), "cpu_count": os.cpu_count(),
              "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
              "levers_dtype": str(next(levers.model.parameters()).dtype),
              "note": args.note, "records": records}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
