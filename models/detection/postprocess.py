"""From decoded boxes and class scores to final detections: threshold, filter, NMS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

# NMS on CPU is quadratic in the boxes that survive: with conf=0, iou=1, agnostic and
# multi_label, NanoDet's 3,549 anchors x 80 classes all enter it. Measured on this
# project's 2-core box, 16 such images took 21 s at 10,000 candidates per image. At
# 3,000 (upstream NanoDet keeps 1,000 per level before NMS, so 3,000 for its three
# levels) the same request is bounded near a tenth of that; max_det is at most 1,000.
MAX_NMS_CANDIDATES = 3_000


@dataclass
class Detections:
    """The detections of one image, highest score first.

    Attributes:
        boxes: ``(N, 4)`` float xyxy, in the pixels of the image they refer to.
        scores: ``(N,)`` float confidence in [0, 1].
        labels: ``(N,)`` int64 class indices.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The layout torchmetrics' MeanAveragePrecision expects."""
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, *, conf: float = 0.25,
                iou: float = 0.45, max_det: int = 300, classes: Sequence[int] | None = None,
                agnostic: bool = False, multi_label: bool = False,
                max_candidates: int = MAX_NMS_CANDIDATES) -> list[Detections]:
    """Turn per-anchor predictions into detections, one `Detections` per image.

    By default each anchor keeps its best class (one box per anchor, as
    Ultralytics predicts). With `multi_label`, every class above `conf` at an
    anchor is a candidate, as upstream NanoDet's ``multiclass_nms`` does: where
    two classes compete on one anchor (a horse NanoDet also half believes is a
    cow) the runner-up is not lost; NMS per class still removes duplicates.

    Args:
        boxes: ``(B, A, 4)`` xyxy boxes.
        scores: ``(B, A, C)`` class probabilities (after the sigmoid).
        conf: Keep anchors whose best class score is above this.
        iou: NMS IoU threshold: a box overlapping a higher-scored one by more is dropped.
        max_det: At most this many detections per image.
        classes: If given, keep only detections whose label is one of these.
        agnostic: Suppress overlapping boxes whatever their classes (by default
            NMS runs per class, so overlapping objects of different classes survive).
        multi_label: One candidate per (anchor, class) above `conf`, not per anchor.
        max_candidates: At most this many boxes enter NMS (the highest scored),
            which bounds its cost on an untrained or very busy model, or a request
            asking for the worst case (see `MAX_NMS_CANDIDATES`).
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, A, 4), got {tuple(boxes.shape)}")
    if scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"scores {tuple(scores.shape)} do not match boxes {tuple(boxes.shape)}")
    n_images, n_anchors, n_classes = scores.shape
    # Candidates of the whole batch at once, rows sorted by image; then NMS image by
    # image. (One NMS over the batch, its groups per image and class, was measured slower:
    # torchvision's CPU batched_nms scans every row once per group, so with many
    # candidates (conf 0.001, multi_label) a batch of 8 NanoDet images took 476 ms
    # against 100 ms image by image.)
    wanted = None
    if classes is not None:
        wanted = torch.zeros(n_classes, dtype=torch.bool, device=scores.device)
        wanted[[c for c in classes if 0 <= c < n_classes]] = True
    if multi_label:  # a candidate per (anchor, class): column a * C + c
        passing = scores > conf  # (B, A, C); compared before reshaping, which may copy
        if wanted is not None:
            passing &= wanted
        passing = passing.reshape(n_images, n_anchors * n_classes)
    else:  # a candidate per anchor, its best class
        best, best_label = scores.max(dim=-1)  # (B, A) each
        passing = best > conf
        if wanted is not None:
            passing &= wanted[best_label]
    image, column = passing.nonzero(as_tuple=True)  # sorted by image
    if image.numel() > max_candidates and int(torch.bincount(image).max()) > max_candidates:
        # At most `max_candidates` per image enter NMS, the highest scored.
        flat = scores.reshape(n_images, -1) if multi_label else best
        top = torch.where(passing, flat, -1.0).topk(max_candidates, dim=1).indices  # (B, k)
        # In anchor order, as when none is dropped: where scores tie exactly, what NMS
        # keeps must not depend on how many candidates the other images have.
        top = top.sort(dim=1).values
        ok = passing.gather(1, top)
        image = torch.arange(n_images, device=scores.device)[:, None].expand_as(top)[ok]
        column = top[ok]
    if multi_label:
        anchor, label = column // n_classes, column % n_classes
        score = scores[image, anchor, label].float()
    else:
        anchor, label, score = column, best_label[image, column], best[image, column].float()
    box = boxes[image, anchor].float()
    counts = torch.bincount(image, minlength=n_images).tolist()
    out = []
    for bx, sc, lb in zip(box.split(counts), score.split(counts), label.split(counts),
                          strict=True):
        idx = batched_nms(bx, sc, torch.zeros_like(lb) if agnostic else lb, iou)[:max_det]
        out.append(Detections(bx[idx], sc[idx], lb[idx].long()))  # by decreasing score
    return out
