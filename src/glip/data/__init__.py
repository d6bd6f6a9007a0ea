"""Training data: datasets (COCO detection, MDETR grounding, ODVG), transforms, prompts, batching."""

from glip.data.collate import Batch, Collator, Target, collate
from glip.data.datasets import (
    BoxStats,
    DatasetOptions,
    DetectionDataset,
    GroundingDataset,
    MixedDataset,
    ODVGDataset,
    Sample,
)
from glip.data.transforms import TestTransforms, TrainTransforms

__all__ = [
    "Batch",
    "BoxStats",
    "Collator",
    "DatasetOptions",
    "DetectionDataset",
    "GroundingDataset",
    "MixedDataset",
    "ODVGDataset",
    "Sample",
    "Target",
    "TestTransforms",
    "TrainTransforms",
    "collate",
]
