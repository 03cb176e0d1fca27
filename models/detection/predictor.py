"""The detection `Predictor`: letterbox → forward → decode, NMS, map back to the original.

Works with any model whose forward output goes through ``model.decode(raw)`` to
``(boxes (B, A, 4) xyxy in input pixels, probs (B, A, C))`` (`Detector`, NanoDet).

The image handed to `DetectionPredictor.preprocess` may be smaller than the
upload (the service decodes large JPEGs at 1/2, 1/4 or 1/8 scale); pass the
upload's ``original_size`` and boxes come back in the ORIGINAL image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from models.detection.detector import Detector, DetectorOutput
from models.detection.letterbox import LetterboxParams, boxes_from_letterbox, letterbox
from models.detection.postprocess import Detections, postprocess
from models.predictor import Predictor


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes:
        label: Class name.
        class_id: Class index into the model's labels.
        score: Confidence in [0, 1].
        box: ``[x1, y1, x2, y2]`` in the original image's pixels (edges, so a box
            covering the whole image is ``[0, 0, width, height]``).
    """

    label: str
    class_id: int
    score: float
    box: list[float]


@dataclass(frozen=True)
class DetectionMeta:
    """What postprocess needs to map boxes from the model input to the original image.

    Attributes:
        letterbox: Placement of the (possibly reduced) decoded image in the input square.
        scale_x: Original width / decoded width (1.0 unless decoded at reduced size).
        scale_y: Original height / decoded height.
        width: Width of the original image.
        height: Height of the original image.
    """

    letterbox: LetterboxParams
    scale_x: float
    scale_y: float
    width: int
    height: int

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy ``(N, 4)`` in input-square pixels → xyxy ``(N, 4)`` in original pixels."""
        boxes = boxes_from_letterbox(boxes, self.letterbox)  # decoded-image pixels, clipped
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        limit = boxes.new_tensor([self.width, self.height, self.width, self.height])
        # Clip again: float rounding of the scale must not push an edge past the image.
        return torch.minimum((boxes * scale).clamp(min=0), limit)


class DetectionPredictor(Predictor):
    """Letterbox and normalise, forward, then decode, NMS and map boxes back.

    Postprocess options (all keyword): ``conf`` (score threshold), ``iou`` (NMS
    IoU threshold), ``max_det`` (detections per image), ``classes`` (keep only
    these class ids), ``agnostic`` (NMS across classes), ``multi_label`` (every
    class above ``conf`` per anchor; None: the manifest's ``postprocessing``
    default, else one best class per anchor as in Ultralytics).
    """

    task = "detect"

    @property
    def multi_label(self) -> bool:
        """The default of the ``multi_label`` option, written in the manifest at export."""
        return bool(self.manifest.postprocessing.get("multi_label", False))

    def preprocess(self, image: torch.Tensor, *, original_size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, DetectionMeta]:
        """uint8 ``(3, h, w)`` → normalised ``(3, S, S)`` and the geometry to map boxes back.

        Args:
            image: The decoded RGB image.
            original_size: ``(width, height)`` of the original image when `image` was
                decoded at reduced size; None when `image` is the original.
        """
        pre = self.preprocessing
        if pre.mode != "letterbox":
            raise ValueError(f"a detection model needs preprocessing mode 'letterbox', "
                             f"the manifest says {pre.mode!r}")
        _, h, w = image.shape
        width, height = original_size if original_size is not None else (w, h)
        boxed, params = letterbox(image, pre.crop_size, interpolation=pre.interpolation_mode)
        meta = DetectionMeta(params, width / w, height / h, int(width), int(height))
        return pre.normalize(boxed), meta  # (3, S, S) float

    def batch_major(self, outputs: Any) -> Any:
        """A `DetectorOutput` → the plain tuple ``(dist, cls, anchors, strides)``, batch-major.

        Its per-level anchors ``(A, 2)`` and strides ``(A, 1)`` are shared by all
        images: they are expanded (a view, no copy) to ``(B, A, 2)`` and
        ``(B, A, 1)``, so the rows of any request can be cut out of a batch. A
        plain tuple also traces (a named tuple does not). Other models' outputs
        (NanoDet: per-level tuples of ``(B, ...)`` tensors) pass unchanged.
        """
        if isinstance(self.model, Detector):
            dist, cls, anchors, strides = outputs
            b = cls.shape[0]
            return dist, cls, anchors.expand(b, -1, -1), strides.expand(b, -1, -1)
        return outputs

    def _decode(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.model, Detector):
            dist, cls, anchors, strides = outputs  # batch-major: every row the same anchors
            outputs = DetectorOutput(dist, cls, anchors[0], strides[0])
        return self.model.decode(outputs)

    def detect(self, outputs: Any, metas: Sequence[DetectionMeta], *, conf: float = 0.25,
               iou: float = 0.45, max_det: int = 300, classes: Sequence[int] | None = None,
               agnostic: bool = False, multi_label: bool | None = None) -> list[Detections]:
        """Raw outputs of a batch → per image `Detections` (tensors) in original pixels."""
        boxes, probs = self._decode(outputs)  # (B, A, 4) input px, (B, A, C)
        dets = postprocess(boxes, probs, conf=conf, iou=iou, max_det=max_det,
                           classes=None if classes is None else list(classes),
                           agnostic=agnostic,
                           multi_label=self.multi_label if multi_label is None else multi_label)
        for d, meta in zip(dets, metas, strict=True):
            d.boxes = meta.to_original(d.boxes.float().cpu())
            d.scores, d.labels = d.scores.cpu(), d.labels.cpu()
        return dets

    def postprocess(self, outputs: Any, metas: list[Any], *, conf: float = 0.25,
                    iou: float = 0.45, max_det: int = 300, classes: Sequence[int] | None = None,
                    agnostic: bool = False, multi_label: bool | None = None, **_: Any
                    ) -> list[list[Detection]]:
        """Raw outputs → for each image its `Detection` list, highest score first."""
        dets = self.detect(outputs, metas, conf=conf, iou=iou, max_det=max_det,
                           classes=classes, agnostic=agnostic, multi_label=multi_label)
        return [
            [Detection(self.labels[c], c, s, box)
             for box, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(),
                                  strict=True)]
            for d in dets
        ]
