"""Evaluation: COCO detection mAP through COCOeval (faster-coco-eval or pycocotools), dense-caption mAP, DDP
gathering."""

from vitkit.eval.coco_eval import BACKENDS, STAT_KEYS, CocoEvalResult, evaluate_coco, format_summary, load_gt
from vitkit.eval.coco_results import load_results, validate_results
from vitkit.eval.dense_caption import RegionGroundTruth, RegionPredictions, dense_caption_map
from vitkit.eval.gather import gather_image_ids, gather_results, merge_rank_results

__all__ = [
    "BACKENDS",
    "STAT_KEYS",
    "CocoEvalResult",
    "RegionGroundTruth",
    "RegionPredictions",
    "dense_caption_map",
    "evaluate_coco",
    "format_summary",
    "gather_image_ids",
    "gather_results",
    "load_gt",
    "load_results",
    "merge_rank_results",
    "validate_results",
]
