"""headseg: find every head in a photo, segment it, and tell what it wears.

Stage 1 is torchvision's Mask R-CNN (:mod:`headseg.segmentation`), stage 2 a transfer-learned
classifier on masked head crops (:mod:`headseg.crops`, :mod:`headseg.classification`), and
:class:`HeadwearPipeline` runs both (:mod:`headseg.pipeline`).
"""

from headseg.classification import build_classifier, load_classifier
from headseg.config import ClsConfig, SegConfig, load_config
from headseg.pipeline import Head, HeadwearPipeline, ImageResult
from headseg.segmentation import build_segmenter, load_segmenter

__version__ = "0.1.0"

__all__ = [
    "HeadwearPipeline",
    "ImageResult",
    "Head",
    "build_segmenter",
    "build_classifier",
    "load_segmenter",
    "load_classifier",
    "load_config",
    "SegConfig",
    "ClsConfig",
]
