"""The caption tokenizer's life cycle in training (datamodule and Lightning module mixins), shared by captioning
and describe: load or train, share rank 0's under DDP, save to ``tokenizer.json`` and checkpoints, restore.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from vitkit.captioning.tokenizer import CaptionTokenizer, load_or_train_tokenizer, tokenizer_mismatch
from vitkit.training.guards import ConfigError
from vitkit.utils.distributed import broadcast_object, is_distributed, rank
from vitkit.utils.spec import read_spec

TOKENIZER_MODELS = ("wordlevel", "bpe", "wordpiece")


def check_tokenizer_settings(tokenizer: str | None, tokenizer_model: str, max_length: int) -> None:
    """Check ``data.tokenizer``, ``data.tokenizer_model`` and ``data.max_length``.

    Raises:
        ValueError: an unknown ``tokenizer_model``, or ``max_length`` < 2.
        FileNotFoundError: ``tokenizer`` names no file.
    """
    if tokenizer_model not in TOKENIZER_MODELS:
        raise ValueError(f"data.tokenizer_model must be wordlevel|bpe|wordpiece, got {tokenizer_model!r}")
    if max_length < 2:
        raise ValueError(f"data.max_length must be >= 2 (room for BOS and EOS), got {max_length}")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise FileNotFoundError(f"data.tokenizer: no tokenizer file at {tokenizer} (give a tokenizer.json, e.g. "
                                "runs/<config>/version_0/tokenizer.json, or leave it null to train one)")


class TokenizerDataMixin:
    """A datamodule's caption tokenizer. The datamodule has the hyper-parameters ``tokenizer`` (a path or None),
    ``vocab_size`` and ``tokenizer_model``, and implements :meth:`tokenizer_texts`; its ``setup`` calls
    :meth:`_share_rank0_tokenizer` first."""

    _tokenizer: CaptionTokenizer | None = None
    hparams: Any

    def tokenizer_texts(self) -> Iterable[str]:
        """The training texts a tokenizer is trained on (when ``tokenizer`` is None)."""
        raise NotImplementedError(f"{type(self).__name__} must define tokenizer_texts()")

    @property
    def tokenizer(self) -> CaptionTokenizer:
        """The caption tokenizer: loaded from ``tokenizer``, or trained on :meth:`tokenizer_texts` at first use."""
        if self._tokenizer is None:
            hp = self.hparams
            self._tokenizer = load_or_train_tokenizer(hp.tokenizer, self.tokenizer_texts, hp.vocab_size,
                                                      hp.tokenizer_model)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's number of ids, the model's V (may be below ``hparams.vocab_size``)."""
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    def use_tokenizer(self, tokenizer: CaptionTokenizer, source: str) -> None:
        """Replace the tokenizer with one of the same size and special ids; ValueError when they differ."""
        ours, theirs = self.tokenizer, tokenizer
        key = (ours.vocab_size, ours.pad_id, ours.bos_id, ours.eos_id)
        new = (theirs.vocab_size, theirs.pad_id, theirs.bos_id, theirs.eos_id)
        if key != new:
            raise ValueError(f"{source}: its tokenizer (vocab_size, pad, bos, eos ids) = {new} does not fit this "
                             f"run's {key}; pass the matching tokenizer.json with --data.tokenizer PATH")
        self._tokenizer = tokenizer

    def _share_rank0_tokenizer(self) -> None:
        """Make every rank take rank 0's tokenizer under DDP."""
        if not is_distributed():
            return
        shared = broadcast_object(self.tokenizer.to_str() if rank() == 0 else None, src=0)
        if shared != self.tokenizer.to_str():
            self.use_tokenizer(CaptionTokenizer.from_str(shared), "rank 0")


class TokenizerModuleMixin:
    """A Lightning module's caption tokenizer: put it before the Lightning base class (``class M(TokenizerModuleMixin,
    TaskModule)``); its hooks call the next class's. The module implements :meth:`text_model` and names it in
    :attr:`text_key` (its config key) and :attr:`text_name` (for messages)."""

    tokenizer: CaptionTokenizer | None = None  # from the datamodule at setup, or from a checkpoint
    text_key: ClassVar[str]  # the text model's config key, e.g. "model.captioner"
    text_name: ClassVar[str]  # the text model in messages, e.g. "captioner"
    trainer: Any
    _trainer: Any
    logger: Any

    def text_model(self) -> nn.Module:
        """The text network whose ``vocab_size`` and special ids the tokenizer must match."""
        raise NotImplementedError(f"{type(self).__name__} must define text_model()")

    def check_tokenizer(self, tokenizer: CaptionTokenizer, what: str) -> None:
        """Raise a :class:`~vitkit.training.guards.ConfigError` when ``tokenizer`` (from ``what``) does not fit the text
        model's vocabulary size and special ids."""
        problem = tokenizer_mismatch(tokenizer, self.text_model(), what, self.text_name, self.text_key)
        if problem is not None:
            raise ConfigError(problem)

    def tokenizer_json(self) -> str | None:
        """The tokenizer as the tokenizer.json string a checkpoint's spec stores (None before there is one)."""
        return None if self.tokenizer is None else self.tokenizer.to_str()

    def run_folder(self) -> Path | None:
        """The logger's run folder (``trainer.log_dir`` is a collective call under DDP: every rank must ask)."""
        log_dir = self.trainer.log_dir
        return Path(log_dir) if self.logger is not None and log_dir is not None else None

    def setup(self, stage: str) -> None:
        """Take the datamodule's tokenizer (unless a checkpoint gave one) and check it against the text model."""
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is None and dm is not None and hasattr(dm, "tokenizer"):
            self.tokenizer = dm.tokenizer
        if self.tokenizer is not None:
            self.check_tokenizer(self.tokenizer, "the datamodule's tokenizer")

    def on_fit_start(self) -> None:
        """Write the tokenizer to the run folder (``tokenizer.json``, on rank 0)."""
        super().on_fit_start()
        run = self.run_folder()
        if self.tokenizer is not None and self.trainer.is_global_zero and run is not None:
            run.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(run / "tokenizer.json")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The next class's checks, then the tokenizer of the checkpoint's spec, when it has one: it wins over the
        data's (checked against the text model first), and the datamodule tokenises with it from now on."""
        super().on_load_checkpoint(checkpoint)
        spec = read_spec(checkpoint)
        if spec is None or spec.tokenizer is None or self.tokenizer_json() == spec.tokenizer:
            return
        tokenizer = CaptionTokenizer.from_str(spec.tokenizer)
        self.check_tokenizer(tokenizer, "the checkpoint's tokenizer")
        self.tokenizer = tokenizer
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "use_tokenizer"):
            dm.use_tokenizer(tokenizer, "the checkpoint")
