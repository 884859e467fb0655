"""Detection, all in one place: the DETR model and its query sources, Hungarian matching, set losses,
post-processing, the predictor, the Lightning module and datamodule, export and pictures."""

from vitkit.detection.criterion import SetCriterion, average_num_boxes
from vitkit.detection.matcher import HungarianMatcher
from vitkit.detection.model import DETR
from vitkit.detection.postprocess import PostProcess

__all__ = ["DETR", "HungarianMatcher", "PostProcess", "SetCriterion", "average_num_boxes"]
