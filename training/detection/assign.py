"""Which anchors learn which ground-truth box: the task-aligned assigner of TOOD/YOLOv8.

Why this one rather than SimOTA or plain centre sampling: it ranks the anchors
inside a box by ``score^alpha * IoU^beta``, the same alignment the head is asked
to produce (a high class score where the box is accurate), so classification
and localisation are trained towards the same anchors. It is fully vectorised
(top-k per box, no per-image cost matrix or dynamic-k loop as in SimOTA), and
it is what the DFL + decoupled head design was tuned with.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchvision.ops import box_iou


class Assignment(NamedTuple):
    """Targets per anchor.

    Attributes:
        boxes: ``(B, A, 4)`` xyxy box of the assigned object (meaningless where not fg).
        scores: ``(B, A, C)`` soft class targets: alignment-normalised IoU on the
            assigned class, 0 elsewhere and on background anchors.
        fg: ``(B, A)`` bool, anchors assigned to an object.
        gt_index: ``(B, A)`` index of the assigned object in the padded ground truth.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    fg: torch.Tensor
    gt_index: torch.Tensor


class TaskAlignedAssigner:
    """Assign each object its `topk` best-aligned anchors among those inside it.

    Args:
        topk: Candidate anchors per object.
        alpha: Exponent of the class score in the alignment metric.
        beta: Exponent of the IoU in the alignment metric.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def __call__(self, pd_scores: torch.Tensor, pd_boxes: torch.Tensor, anchors: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor
                 ) -> Assignment:
        """Assign.

        Args:
            pd_scores: ``(B, A, C)`` predicted class probabilities.
            pd_boxes: ``(B, A, 4)`` predicted xyxy boxes, pixels.
            anchors: ``(A, 2)`` anchor points, pixels.
            gt_labels: ``(B, M)`` int64 classes of the padded ground truth.
            gt_boxes: ``(B, M, 4)`` xyxy boxes, pixels.
            gt_mask: ``(B, M)`` bool, True for real (not padding) objects.
        """
        b, a, c = pd_scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return Assignment(torch.zeros_like(pd_boxes), torch.zeros_like(pd_scores),
                              torch.zeros((b, a), dtype=torch.bool, device=pd_scores.device),
                              torch.zeros((b, a), dtype=torch.long, device=pd_scores.device))
        # Anchor centres strictly inside each object: (B, M, A).
        pts = anchors[None, None]  # (1, 1, A, 2)
        inside = torch.cat([pts - gt_boxes[..., None, :2], gt_boxes[..., None, 2:] - pts],
                           dim=-1).amin(-1) > self.eps
        cand = inside & gt_mask[..., None]
        # Score of each object's class at each anchor, and IoU with its box: (B, M, A).
        labels = gt_labels.clamp(min=0)
        cls_score = pd_scores.transpose(1, 2).gather(1, labels[..., None].expand(b, m, a))
        iou = torch.stack([box_iou(g, p) for g, p in zip(gt_boxes, pd_boxes, strict=True)])
        # Padding objects are (0, 0, 0, 0): against a degenerate prediction, 0 / 0.
        iou = iou.nan_to_num(0.0) * cand
        align = cls_score.pow(self.alpha) * iou.pow(self.beta) * cand  # (B, M, A)
        k = min(self.topk, a)
        top = align.topk(k, dim=-1).indices  # (B, M, k)
        pos = torch.zeros_like(cand).scatter_(-1, top, True) & cand  # (B, M, A)
        # An anchor claimed by several objects goes to the one it overlaps most.
        multi = pos.sum(1, keepdim=True) > 1  # (B, 1, A)
        best = (iou * pos).argmax(1)  # (B, A)
        best_onehot = torch.zeros_like(pos).scatter_(1, best[:, None], True)
        pos = torch.where(multi, best_onehot & pos, pos)
        fg = pos.any(1)  # (B, A)
        gt_index = pos.float().argmax(1)  # (B, A)
        t_labels = labels.gather(1, gt_index)  # (B, A)
        t_boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, a, 4))  # (B, A, 4)
        # Soft targets: each object's alignment rescaled so its best anchor gets its best IoU.
        align = align * pos
        norm = align * (iou * pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True)
                                                             + self.eps)
        t_scores = torch.nn.functional.one_hot(t_labels, c).to(pd_scores.dtype)
        t_scores = t_scores * (norm.amax(1) * fg)[..., None]  # (B, A, C)
        return Assignment(t_boxes, t_scores, fg, gt_index)
