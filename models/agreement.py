"""How closely a fast path's results follow eager fp32's on the same real images.

Two users: ``auto`` (service/backends.py) takes a fast backend only when its
`agreement` with eager is high enough, and ``ocellus quantize --unlabelled``
(training/quantize.py) gates an int8 model with no labelled data to score it on
(the default ImageNet and COCO models) on `agreement_report`.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_iou

from models.predictor import Predictor, rows

DETECTION_IOU = 0.9
# A classifier's result counts as confident when eager gives its top-1 at least this
# probability: photos outside the label set (a giraffe for ImageNet's classes) spread
# their probability thin, and which of two 0.1 classes wins is not a property of the model.
CONFIDENT = 0.5


def agreement(predictor: Predictor, reference: Any, candidate: Any, metas: list[Any], *,
              iou: float = DETECTION_IOU) -> float:
    """Fraction of results that agree: top-1 for classify; matched boxes for detect.

    Each image's results come from its own rows of the outputs (`rows`), the way
    the batcher serves a request that shares a forward pass with others.

    For detection a box agrees when the other side has a box of the same class
    with IoU >= `iou`; the score is matched boxes over all boxes (both
    sides), and an image with no boxes on either side counts as one agreement.
    """
    n = len(metas)
    per_image = [rows(candidate, i, i + 1, n) for i in range(n)]
    if predictor.task == "classify":
        ref = reference.float().argmax(1)  # (N,)
        cand = torch.cat([c.float().argmax(1) for c in per_image])
        return float((ref == cand).float().mean())
    ref_dets = predictor.postprocess(reference, metas)
    cand_dets = [d for c, m in zip(per_image, metas, strict=True)
                 for d in predictor.postprocess(c, [m])]
    matched = total = 0
    for rs, cs in zip(ref_dets, cand_dets, strict=True):
        if not rs and not cs:
            matched, total = matched + 1, total + 1
            continue
        ious = box_iou(torch.tensor([r.box for r in rs]).reshape(-1, 4),
                       torch.tensor([c.box for c in cs]).reshape(-1, 4))  # (R, C)
        free = list(range(len(cs)))
        for i, r in enumerate(rs):
            hit = next((j for j in free if cs[j].class_id == r.class_id
                        and ious[i, j] >= iou), None)
            if hit is not None:
                free.remove(hit)
                matched += 2
        total += len(rs) + len(cs)
    return matched / total if total else 1.0


def agreement_report(predictor: Predictor, reference: Any, candidate: Any,
                     metas: list[Any]) -> dict[str, float | int]:
    """The agreement measures for data without labels.

    Classify: top-1 agreement over all images and over the ones eager is
    confident about (`CONFIDENT`), and top-5 containment (eager's top-1 is among
    the candidate's top 5). Detect: matched boxes at IoU 0.5 and at
    `DETECTION_IOU`.
    """
    n = len(metas)
    report: dict[str, float | int] = {"images": n}
    if predictor.task == "classify":
        ref = reference.float().softmax(1)
        cand = candidate.float()
        top1 = ref.argmax(1)
        same = cand.argmax(1) == top1
        confident = ref.max(1).values >= CONFIDENT
        top5 = cand.topk(min(5, cand.shape[1]), 1).indices
        report.update(top1=float(same.float().mean()),
                      top5_containment=float((top5 == top1[:, None]).any(1).float().mean()),
                      confident_images=int(confident.sum()),
                      confident_top1=float(same[confident].float().mean())
                      if confident.any() else 1.0)
        return report
    report.update(boxes_iou50=agreement(predictor, reference, candidate, metas, iou=0.5),
                  boxes_iou90=agreement(predictor, reference, candidate, metas))
    return report
