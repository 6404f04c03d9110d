"""headseg: find every head in a photo, segment it, and tell what it wears.

Stage 1 is torchvision's Mask R-CNN (:mod:`headseg.segmentation`), stage 2 a transfer-learned
classifier on masked head crops (:mod:`headseg.crops`, :mod:`headseg.crop_sets`,
:mod:`headseg.classification`), and :class:`HeadwearPipeline` runs both (:mod:`headseg.pipeline`).
Both stages train with one engine (:mod:`headseg.engine`).
"""

from headseg.classification import Classifier, build_classifier, load_classifier
from headseg.config import ClsConfig, SegConfig, load_config
from headseg.pipeline import Head, HeadwearPipeline, ImageResult
from headseg.segmentation import Segmenter, build_segmenter, load_segmenter

__version__ = "0.1.0"

__all__ = [
    "HeadwearPipeline",
    "ImageResult",
    "Head",
    "Segmenter",
    "Classifier",
    "build_segmenter",
    "build_classifier",
    "load_segmenter",
    "load_classifier",
    "load_config",
    "SegConfig",
    "ClsConfig",
]
