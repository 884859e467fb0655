"""The tasks' training CLIs: each a :class:`~vitkit.cli.task_cli.TaskCLI` that names its module, datamodule and
best-checkpoint metric, links data attributes into the model and records the resolved network config for
checkpoints. :data:`TASK_CLIS` maps a config's ``task`` to its CLI (:func:`vitkit.cli.train.select_task`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.module import CaptionModule
from vitkit.cli.task_cli import TaskCLI
from vitkit.describe.datamodule import DescribeDataModule
from vitkit.describe.module import DescribeModule
from vitkit.detection.datamodule import CocoDataModule
from vitkit.detection.module import DetectionModule


class DetectionCLI(TaskCLI):
    """Detection: :class:`DetectionModule` on :class:`CocoDataModule`, best checkpoints by ``val/AP``."""

    task, network_key, networks = "detection", "detector", ("detector",)
    module_class, datamodule_class = DetectionModule, CocoDataModule
    monitor, ckpt_filename = "val/AP", "epoch{epoch:03d}-ap{val/AP:.3f}"

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """The data's class count, class names and category ids into the model and its detector."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")

    def record_network_config(self) -> None:
        """The detector's config with the data's class count."""
        detector = self.network_config()
        detector["init_args"]["num_classes"] = self.datamodule.num_classes
        self.model.detector_config = detector


CAPTION_LINKS = ("vocab_size", "pad_id", "bos_id", "eos_id")  # datamodule attributes -> captioner arguments


def link_tokenizer(parser: LightningArgumentParser, network: str) -> None:
    """Link the datamodule's tokenizer values (:data:`CAPTION_LINKS`) and ``max_length`` into ``model.<network>``."""
    for name in CAPTION_LINKS:
        parser.link_arguments(f"data.{name}", f"model.{network}.init_args.{name}", apply_on="instantiate")
    parser.link_arguments("data.max_length", f"model.{network}.init_args.max_length")


def tokenizer_config(config: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """A text network's resolved config with the datamodule's tokenizer values and ``max_length`` (in place)."""
    for name in CAPTION_LINKS:
        config["init_args"][name] = getattr(datamodule, name)
    config["init_args"]["max_length"] = datamodule.hparams.max_length
    return config


class CaptionCLI(TaskCLI):
    """Captioning: :class:`CaptionModule` on :class:`CaptionDataModule`, best checkpoints by ``val/CIDEr``."""

    task, network_key, networks = "captioning", "captioner", ("captioner",)
    module_class, datamodule_class = CaptionModule, CaptionDataModule
    monitor, ckpt_filename = "val/CIDEr", "epoch{epoch:03d}-cider{val/CIDEr:.3f}"

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """The tokenizer's vocabulary size and special ids, and the data's ``max_length``, into the captioner; the
        object labels' category count into the module."""
        link_tokenizer(parser, self.network_key)
        parser.link_arguments("data.num_object_classes", "model.object_classes", apply_on="instantiate")

    def record_network_config(self) -> None:
        """The captioner's config with the tokenizer's values and ``max_length``."""
        self.model.captioner_config = tokenizer_config(self.network_config(), self.datamodule)


class DescribeCLI(DetectionCLI):
    """Describe (detect, then caption each object): :class:`DescribeModule` on :class:`DescribeDataModule`, best
    checkpoints by the detection validation's ``val/AP`` (``val/describe_mAP`` is logged beside it).

    The detection links, plus the region tokenizer's vocabulary size, special ids and ``max_length`` into the text
    decoder (``model.text``), as :class:`CaptionCLI` links them into the captioner.
    """

    task, text_key, networks = "describe", "text", ("detector", "text")
    module_class, datamodule_class = DescribeModule, DescribeDataModule

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """The detection links and the tokenizer's values into ``model.text``."""
        super().add_task_links(parser)
        link_tokenizer(parser, self.text_key)

    def record_network_config(self) -> None:
        """The detector's config with the class count and the text decoder's with the tokenizer's values."""
        super().record_network_config()
        self.model.text_config = tokenizer_config(self.network_config(self.text_key), self.datamodule)


TASK_CLIS: dict[str, type[TaskCLI]] = {cli.task: cli for cli in (DetectionCLI, CaptionCLI, DescribeCLI)}
