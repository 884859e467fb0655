"""Evaluation: COCO detection mAP through COCOeval (faster-coco-eval or pycocotools), the describe mAP (DenseCap's
dense-captioning mAP), DDP gathering."""

from vitkit.eval.coco_eval import BACKENDS, STAT_KEYS, CocoEvalResult, evaluate_coco, format_summary, load_gt
from vitkit.eval.coco_results import load_results, validate_results
from vitkit.eval.describe_map import RegionGroundTruth, RegionPredictions, evaluate_describe
from vitkit.eval.gather import gather_image_ids, gather_results, merge_rank_results

__all__ = [
    "BACKENDS",
    "STAT_KEYS",
    "CocoEvalResult",
    "RegionGroundTruth",
    "RegionPredictions",
    "evaluate_coco",
    "evaluate_describe",
    "format_summary",
    "gather_image_ids",
    "gather_results",
    "load_gt",
    "load_results",
    "merge_rank_results",
    "validate_results",
]
