"""The detection loss: BCE on classes, CIoU + DFL on boxes (YOLOv8's recipe)."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.ops import complete_box_iou_loss

from models.detection.detector import DetectorOutput, decode_boxes
from training.detection.assign import TaskAlignedAssigner


def pad_targets(targets: torch.Tensor, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(M, 6)`` [batch_index, class, x1, y1, x2, y2] → padded per-image tensors.

    Returns labels ``(B, Mmax)`` int64, boxes ``(B, Mmax, 4)`` and a mask ``(B, Mmax)``.
    """
    idx = targets[:, 0].long()
    counts = torch.bincount(idx, minlength=batch_size) if idx.numel() else \
        torch.zeros(batch_size, dtype=torch.long)
    m = int(counts.max()) if counts.numel() else 0
    labels = torch.zeros((batch_size, m), dtype=torch.long, device=targets.device)
    boxes = torch.zeros((batch_size, m, 4), dtype=targets.dtype, device=targets.device)
    mask = torch.zeros((batch_size, m), dtype=torch.bool, device=targets.device)
    for i in range(batch_size):
        rows = targets[idx == i]
        n = rows.shape[0]
        labels[i, :n], boxes[i, :n], mask[i, :n] = rows[:, 1].long(), rows[:, 2:], True
    return labels, boxes, mask


def dfl_loss(dist: torch.Tensor, target: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss of ``(P, 4R)`` logits for ``(P, 4)`` continuous bin targets.

    The target t between bins ⌊t⌋ and ⌊t⌋+1 is spread over both by linear
    interpolation, so the expected value of the learnt distribution is t.
    Returns ``(P,)``, the mean over the 4 sides.
    """
    target = target.clamp(0, reg_max - 1 - 0.01)
    left = target.long()  # (P, 4)
    w_left = left + 1 - target
    logits = dist.reshape(-1, reg_max)  # (P*4, R)
    ce_l = F.cross_entropy(logits, left.reshape(-1), reduction="none").view_as(target)
    ce_r = F.cross_entropy(logits, (left + 1).reshape(-1), reduction="none").view_as(target)
    return (ce_l * w_left + ce_r * (1 - w_left)).mean(-1)


class DetectionLoss:
    """Loss of a `Detector`'s raw outputs against a batch of targets.

    Args:
        reg_max: The detector's DFL bins.
        box_gain, cls_gain, dfl_gain: Weights of the three terms (YOLOv8's defaults).
        assigner: Matches anchors to objects; a `TaskAlignedAssigner` by default.
    """

    def __init__(self, reg_max: int = 16, *, box_gain: float = 7.5, cls_gain: float = 0.5,
                 dfl_gain: float = 1.5, assigner: TaskAlignedAssigner | None = None) -> None:
        self.reg_max = reg_max
        self.gains = {"box": box_gain, "cls": cls_gain, "dfl": dfl_gain}
        self.assigner = assigner or TaskAlignedAssigner()

    def __call__(self, out: DetectorOutput, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss (scalar) and its parts.

        Args:
            out: Raw outputs for a batch of B images.
            targets: ``(M, 6)`` [batch_index, class, x1, y1, x2, y2] in input pixels.
        """
        b = out.cls.shape[0]
        pd_boxes = decode_boxes(out.dist, out.anchors, out.strides, self.reg_max)  # (B, A, 4)
        gt_labels, gt_boxes, gt_mask = pad_targets(targets.to(out.cls.dtype), b)
        t = self.assigner(out.cls.detach().sigmoid(), pd_boxes.detach(), out.anchors,
                          gt_labels, gt_boxes, gt_mask)
        norm = t.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(out.cls, t.scores, reduction="sum") / norm
        if t.fg.any():
            weight = t.scores.sum(-1)[t.fg]  # (P,) soft target of each positive anchor
            loss_box = (complete_box_iou_loss(pd_boxes[t.fg], t.boxes[t.fg], reduction="none")
                        * weight).sum() / norm
            anchors = out.anchors.expand(b, -1, -1)[t.fg]  # (P, 2)
            strides = out.strides.expand(b, -1, -1)[t.fg]  # (P, 1)
            tb = t.boxes[t.fg]
            ltrb = torch.cat([anchors - tb[:, :2], tb[:, 2:] - anchors], dim=-1) / strides
            loss_dfl = (dfl_loss(out.dist[t.fg], ltrb, self.reg_max) * weight).sum() / norm
        else:
            loss_box = loss_dfl = out.dist.sum() * 0.0
        parts = {"box": loss_box, "cls": loss_cls, "dfl": loss_dfl}
        total = sum(self.gains[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
