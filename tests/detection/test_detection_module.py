"""DetectionModule: the injected criterion is bound to the detector, so the loss, the matching cost and the
post-processing follow the detector's head (softmax: cross-entropy; sigmoid: varifocal), in the shipped configs too."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from tests.support.tiny_checkpoints import detector_config
from vitkit.detection import DETR, HungarianMatcher, SetCriterion
from vitkit.detection.module import DetectionModule
from vitkit.utils.config import instantiate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _detector(**init_args) -> DETR:
    config = detector_config(num_classes=3)
    config["init_args"].update(init_args)
    return instantiate(config, DETR)


def _from_config(model: dict) -> DetectionModule:
    """What the CLI does with a config's ``model`` section (the class count linked from the data)."""
    model = copy.deepcopy(model)
    model["detector"]["init_args"]["num_classes"] = model["num_classes"] = 4
    parser = ArgumentParser()
    parser.add_argument("--m", type=DetectionModule)
    config = parser.parse_object({"m": {"class_path": "vitkit.detection.module.DetectionModule", "init_args": model}})
    return parser.instantiate_classes(config).m


@pytest.mark.parametrize("sigmoid_head,loss", [(False, "ce"), (True, "varifocal")])
def test_the_head_decides_loss_matching_and_scores(sigmoid_head: bool, loss: str) -> None:
    torch.manual_seed(0)
    module = DetectionModule(_detector(sigmoid_head=sigmoid_head), SetCriterion(HungarianMatcher()), num_classes=3)
    assert module.criterion.loss_type == loss and module.criterion.num_classes == 3
    assert module.criterion.matcher.sigmoid is sigmoid_head and module.postprocess.sigmoid is sigmoid_head
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2]]), "labels": torch.tensor([i])} for i in range(2)]
    losses = module.criterion(module.detector(images, None, targets), targets)  # the logit width fits the loss
    assert torch.isfinite(losses["loss"])
    (dets,) = module.postprocess(module.detector.eval()(images[:1]), torch.tensor([[64, 64]]))
    assert (dets["labels"] < 3).all()  # no no-object class among the detections, whichever head


@pytest.mark.parametrize("config,loss", [("detr_shapes.yaml", "varifocal"), ("detr_coco.yaml", "varifocal"),
                                         ("detr_r50_coco.yaml", "ce")])
def test_shipped_configs_keep_their_loss(config: str, loss: str) -> None:
    model = yaml.safe_load((CONFIGS / config).read_text())["model"]
    module = _from_config(model)
    assert module.criterion.loss_type == loss and module.postprocess.sigmoid is (loss != "ce")
    if config == "detr_shapes.yaml":  # the varifocal recipe, unchanged: alpha 0.75, class weight and cost 2
        crit = module.criterion
        assert (crit.focal_alpha, crit.weight_dict["loss_ce"], crit.matcher.cost_class) == (0.75, 2.0, 2.0)
        assert (crit.matcher.focal_alpha, crit.enc_one2many_k) == (0.75, 4)  # the cost uses the loss's alpha


def test_a_criterion_serves_one_detector() -> None:
    """The criterion takes the class count and head from the detector it is bound to; another detector's is a clear
    error naming the key."""
    criterion = SetCriterion(HungarianMatcher())
    DetectionModule(_detector(sigmoid_head=True), criterion)
    with pytest.raises(ValueError, match=r"model\.criterion: .*'varifocal' head with 3 classes"):
        DetectionModule(_detector(sigmoid_head=False), criterion)


def test_the_criterion_is_no_hyper_parameter() -> None:
    """The networks and the loss are parts (weights, their own config), not hyper-parameters of the module."""
    module = DetectionModule(_detector(), SetCriterion(HungarianMatcher()), num_classes=3, lr=2e-4)
    assert {"detector", "criterion"}.isdisjoint(module.hparams) and module.hparams.lr == 2e-4

