"""DETR-style set prediction: Hungarian matching, set losses and post-processing."""

from vitkit.detection.criterion import SetCriterion, average_num_boxes
from vitkit.detection.matcher import HungarianMatcher
from vitkit.detection.postprocess import PostProcess

__all__ = ["HungarianMatcher", "PostProcess", "SetCriterion", "average_num_boxes"]
