"""YOLO-style anchor-free detection: letterbox, detector, decode and NMS."""

from models.detection.detector import Detector, DetectorOutput, decode_boxes, make_anchors
from models.detection.letterbox import (
    LetterboxParams,
    boxes_from_letterbox,
    boxes_to_letterbox,
    letterbox,
    letterbox_params,
)
from models.detection.postprocess import Detections, postprocess

__all__ = [
    "Detections",
    "Detector",
    "DetectorOutput",
    "LetterboxParams",
    "boxes_from_letterbox",
    "boxes_to_letterbox",
    "decode_boxes",
    "letterbox",
    "letterbox_params",
    "make_anchors",
    "postprocess",
]
