"""Reference DETR outputs saved before the DETR-as-composition refactor (issue 15), and how to rebuild them.

Two models: vanilla DETR (every convergence switch off) and the shapes default (``configs/detr_shapes.yaml``'s
detector, 4 classes). Weights are not taken from an init (a refactor may create modules in another order): every
state-dict entry is filled from a generator seeded by the CRC32 of its *pre-refactor* key, so the same values land
on the same parameters whatever the module tree looks like now (``RENAMES`` maps today's keys to those names).
``tests/support/detr_reference_<KIND>.safetensors`` hold the outputs computed by the code at be9918b on each CPU
kind (``torch.backends.cpu.get_cpu_capability()``: AVX2 on an AVX2-only EPYC, AVX512 on an AVX-512 bf16 EPYC):
float kernels differ between kinds in the last bit, so bit-identity holds per kind. ``python -m
tests.support.detr_reference`` writes the file of the running kind (only ever do that on purpose, from be9918b).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
import yaml

RECORDED_KIND = "AVX2"  # the first recording; other kinds are compared with it when they have none of their own


def reference_file(kind: str) -> Path:
    """The saved outputs of CPU kind ``kind`` (a ``get_cpu_capability()`` value)."""
    return Path(__file__).parent / f"detr_reference_{kind}.safetensors"


SHAPES_CONFIG = Path(__file__).parents[2] / "configs" / "detr_shapes.yaml"
# today's state-dict key prefix -> the key prefix at be9918b (empty while nothing was renamed)
RENAMES: dict[str, str] = {}


def _old_key(key: str) -> str:
    for new, old in RENAMES.items():
        if key.startswith(new):
            return old + key[len(new):]
    return key


def fill_weights(model: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer with values seeded by its pre-refactor key."""
    state = model.state_dict()
    with torch.no_grad():
        for key, t in state.items():
            if not t.is_floating_point():
                continue
            g = torch.Generator().manual_seed(zlib.crc32(_old_key(key).encode()))
            v = torch.randn(t.shape, generator=g) * 0.1
            if key.endswith("running_var"):
                v = v.abs() + 0.5
            t.copy_(v)


def build(kind: str, instantiate, detr_cls):
    """``vanilla`` or ``shapes``: the model, built through the config path users take."""
    if kind == "shapes":
        cfg = yaml.safe_load(SHAPES_CONFIG.read_text())["model"]["detector"]
        cfg["init_args"]["num_classes"] = 4
    else:
        cfg = {"class_path": "vitkit.detection.DETR",
               "init_args": {"num_classes": 4, "num_queries": 10,
                             "encoder": {"class_path": "vitkit.core.ViTEncoder",
                                         "init_args": {"patch_size": 16, "embed_dim": 64, "depth": 2,
                                                       "num_heads": 4, "pos_embed": "sine", "class_token": False}},
                             "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                                         "init_args": {"dim": 64, "depth": 2, "num_heads": 4}}}}
    model = instantiate(cfg, detr_cls)
    fill_weights(model)
    return model


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 80:], mask[1, :, 112:] = True, True
    images[1][:, mask[1]] = 0
    return {"images": images, "mask": mask,
            "labels0": torch.tensor([0, 2, 3]), "boxes0": torch.tensor([[.3, .3, .2, .2], [.6, .5, .3, .4],
                                                                        [.5, .5, .9, .8]]),
            "labels1": torch.tensor([1]), "boxes1": torch.tensor([[.4, .6, .3, .2]])}


def flatten(out: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested DETR outputs -> flat {dotted key: tensor}; the denoising meta's tensors included."""
    flat = {}
    for k, v in out.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            flat[key] = v
        elif isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                flat.update(flatten(item, f"{key}.{i}."))
        elif hasattr(v, "__dataclass_fields__"):
            for f in v.__dataclass_fields__:
                x = getattr(v, f)
                if isinstance(x, torch.Tensor):
                    flat[f"{key}.{f}"] = x
                elif isinstance(x, int):
                    flat[f"{key}.{f}"] = torch.tensor(x)
    return flat


def run(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Eval and train forwards on fixed inputs -> {"eval.*", "train.*": tensors}."""
    x = inputs()
    targets = [{"labels": x["labels0"], "boxes": x["boxes0"]}, {"labels": x["labels1"], "boxes": x["boxes1"]}]
    with torch.no_grad():
        model.eval()
        out = {f"eval.{k}": v for k, v in flatten(model(x["images"], x["mask"])).items()}
        model.train()
        torch.manual_seed(1)
        out.update({f"train.{k}": v for k, v in flatten(model(x["images"], x["mask"], targets)).items()})
    return {k: v.contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    from vitkit.detection import DETR
    from vitkit.utils.config import instantiate

    tensors = {}
    for kind in ("vanilla", "shapes"):
        tensors.update({f"{kind}.{k}": v for k, v in run(build(kind, instantiate, DETR)).items()})
    out = reference_file(torch.backends.cpu.get_cpu_capability())
    save_file(tensors, out)
    print(len(tensors), "tensors ->", out)
