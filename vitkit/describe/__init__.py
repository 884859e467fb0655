"""Describe (detect, then caption each object; issue 17): detection boxes that each carry a phrase, built from the
detection and captioning parts. The datamodule is :class:`vitkit.describe.datamodule.DescribeDataModule`."""

from vitkit.describe.regions import (
    RegionCaptionCollate,
    RegionCaptionTransform,
    RegionIndex,
    RegionReferences,
    read_region_references,
)

__all__ = ["RegionCaptionCollate", "RegionCaptionTransform", "RegionIndex", "RegionReferences",
           "read_region_references"]
