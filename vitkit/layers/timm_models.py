"""timm models with pretrained weights from timm's source or a local file (``.pth`` read with
``weights_only=True``); a failed download raises :class:`PretrainedWeightsError`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or read."""


def offline_hint(model_name: str) -> str:
    return (f"To continue offline: on a machine with internet run `python -c \"import timm, torch; "
            f"m = timm.create_model('{model_name}', pretrained=True); "
            f"from safetensors.torch import save_file; save_file(m.state_dict(), '{model_name}.safetensors')\"`, "
            f"copy the file here and set `pretrained_file: {model_name}.safetensors` (and pretrained: false) in "
            "the config; or copy the Hugging Face cache (~/.cache/huggingface) and set HF_HUB_OFFLINE=1; or train "
            "from scratch with pretrained: false.")


def create_timm_model(model_name: str, pretrained: bool = False, pretrained_file: str | Path | None = None,
                      **kwargs: Any) -> nn.Module:
    """``timm.create_model`` (``kwargs`` passed on) with pretrained weights from timm's source or a local file.

    Args:
        pretrained: download (or take from the cache) timm's default weights.
        pretrained_file: a local ``.safetensors`` / ``.pth`` with the model's weights (timm's key names); wins over
            ``pretrained`` and needs no network.

    Raises:
        FileNotFoundError: ``pretrained_file`` does not exist.
        PretrainedWeightsError: the download failed, or the file could not be loaded (the message says why and,
            for downloads, how to continue offline).
    """
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file: no weights file at {path} (give a .safetensors or .pth saved "
                                    f"from timm's {model_name})")
        try:
            return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                     **kwargs)
        except Exception as err:
            raise PretrainedWeightsError(f"pretrained_file: cannot load {path} into timm's {model_name} "
                                         f"({type(err).__name__}: {err}). The file must hold that model's state "
                                         "dict with timm's key names, readable with torch.load(weights_only=True) "
                                         "or safetensors.") from err
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as err:
        if isinstance(err, (TypeError, ValueError, KeyError)) and "http" not in str(err).lower():
            raise  # a wrong argument, not a download problem
        raise PretrainedWeightsError(f"could not download timm's pretrained weights for {model_name} "
                                     f"({type(err).__name__}: {err}). {offline_hint(model_name)}") from err
