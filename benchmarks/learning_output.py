"""What the learning race writes: machine facts, the printed table and the two-panel plot (AP and CIDEr-D against
training minutes)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from benchmarks.common import machine_facts as common_machine_facts
from benchmarks.common import require

# task -> (the curve's metric, its label, the sides in plotting order with their labels)
PANELS: dict[str, tuple[str, str, dict[str, str]]] = {
    "detection": ("AP", "COCO AP", {"vitkit": "vitkit (detr_shapes)", "rtdetr": "HF RT-DETR (random init)"}),
    "captions": ("CIDEr", "CIDEr-D", {"vitkit": "vitkit (caption_shapes)", "ved": "HF ViT+GPT-2 (random init)"}),
}
TABLE_KEYS = {"detection": ("AP", "AP50"), "captions": ("Bleu_4", "CIDEr", "greedy_Bleu_4", "greedy_CIDEr")}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts(threads: int) -> dict[str, Any]:
    """Date, CPU, thread count and library versions of this run."""
    return {**common_machine_facts(threads), "transformers": _version("transformers"),
            "lightning": _version("lightning")}


def table(results: dict[str, Any]) -> str:
    """One line per side: training minutes, epochs, steps, step time, then the final point's metrics."""
    lines = [f"{'task':<10} {'side':<7} {'params':>8} {'min':>6} {'epochs':>7} {'steps':>6} {'s/step':>7}  final"]
    for task in PANELS:
        for side, rec in (results.get(task) or {}).items():
            last = rec["points"][-1]
            metrics = "  ".join(f"{k} {last[k]:.3f}" for k in TABLE_KEYS[task] if k in last)
            lines.append(f"{task:<10} {side:<7} {rec['parameters'] / 1e6:7.2f}M {rec['train_minutes']:6.2f} "
                         f"{rec['epochs']:7.2f} {rec['steps']:6d} {rec['step_seconds']:7.3f}  {metrics}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """One panel per task that ran: its metric against training minutes, vitkit against its peer (PNG)."""
    matplotlib = require("matplotlib", "learning race plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in PANELS if results.get(t)]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 4.2), squeeze=False)
    minutes = results["settings"]["minutes"]
    for ax, task in zip(axes[0], tasks, strict=False):
        metric, label, sides = PANELS[task]
        for side, name in sides.items():
            rec = results[task].get(side)
            if rec is None:
                continue
            xs = [p["minutes"] for p in rec["points"]]
            ys = [p[metric] for p in rec["points"]]
            ax.plot(xs, ys, marker="o", label=name)
        ax.axvline(minutes, color="grey", linestyle=":", linewidth=1)  # the budget
        ax.set_ylim(bottom=0)
        ax.set_xlabel("training minutes (evaluation excluded)")
        ax.set_ylabel(label)
        ax.set_title(f"{task}: {label} vs minutes ({minutes:g} min per side)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"learning race, {results['machine']['cpu_model']}, {results['settings']['threads']} threads",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
