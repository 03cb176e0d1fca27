"""Detection metrics (COCO mAP via torchmetrics + pycocotools), on what is served.

Evaluation runs the served `DetectionPredictor` (letterbox, forward, decode,
NMS, map back) on each image as decoded (upright, as the service decodes it)
and scores the boxes against the ground truth in the same pixels.
`evaluate_predictor` scores any stream of samples; the fit loop's
`training.detection.train.evaluate` and ``ocellus evaluate``'s `evaluate_data`
(the task table's ``evaluate``) both feed it from a `YoloDetectionDataset`, so
per-epoch and final figures read the images alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from models.detection.predictor import DetectionPredictor
from models.errors import DatasetError
from training.detection.dataset import YoloDetectionDataset, _split_images, load_data_yaml

# COCO-style evaluation settings: a low threshold so the PR curve covers all recalls.
EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.6, 100
# Per-class recall is read at the service's default operating point (/v1/detect conf).
RECALL_CONF, RECALL_IOU = 0.25, 0.5


def _best_f1_point(precision: torch.Tensor) -> tuple[float, float] | None:
    """From COCO's interpolated precision ``(101,)`` at recall 0..1, the (P, R) of best F1."""
    if bool((precision < 0).all()):
        return None  # no ground truth of this class
    p = precision.clamp(min=0)
    r = torch.linspace(0, 1, precision.numel())
    f1 = 2 * p * r / (p + r).clamp(min=1e-9)
    i = int(f1.argmax())
    return float(p[i]), float(r[i])


def detection_metrics(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                      names: Sequence[str]) -> dict[str, Any]:
    """COCO metrics of per-image predictions against targets.

    Args:
        preds: Per image ``{"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,)}``.
        targets: Per image ``{"boxes" (M, 4) xyxy, "labels" (M,)}``.
        names: Class names, indexed by label.

    Returns:
        ``map50``, ``map50_95``; ``precision`` and ``recall`` at IoU 0.5 at each
        class's best-F1 point of the (COCO-interpolated) PR curve, averaged over
        classes with ground truth; ``per_class_ap`` (AP50-95) and
        ``per_class_ap50``, by class name, for classes with ground truth.
    """
    # sync_on_compute=False: the scores of these images alone. Under torchrun rank 0
    # evaluates while the other ranks wait; a gather across ranks here would hang.
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, extended_summary=True,
                                  backend="pycocotools", sync_on_compute=False)
    metric.update(preds, targets)
    r = metric.compute()
    classes = [int(c) for c in r["classes"].reshape(-1)]
    # precision: (T=10 IoUs, R=101 recalls, K classes, 4 areas, 3 max-dets); area "all", 100 dets.
    pr50 = r["precision"][0, :, :, 0, -1]  # (101, K)
    per_ap = r["map_per_class"].reshape(-1)
    per_class_ap, per_class_ap50, points = {}, {}, []
    for k, c in enumerate(classes):
        point = _best_f1_point(pr50[:, k])
        if point is None:
            continue
        points.append(point)
        name = names[c] if 0 <= c < len(names) else str(c)
        per_class_ap[name] = float(per_ap[k])
        per_class_ap50[name] = float(pr50[:, k].clamp(min=0).mean())
    return {
        "map50": max(float(r["map_50"]), 0.0),
        "map50_95": max(float(r["map"]), 0.0),
        "precision": sum(p for p, _ in points) / len(points) if points else 0.0,
        "recall": sum(q for _, q in points) / len(points) if points else 0.0,
        "per_class_ap": per_class_ap,
        "per_class_ap50": per_class_ap50,
    }


def per_class_recall(preds: list[dict[str, torch.Tensor]],
                     targets: list[dict[str, torch.Tensor]], names: Sequence[str], *,
                     conf: float = RECALL_CONF, iou: float = RECALL_IOU) -> dict[str, float]:
    """Share of each class's ground-truth boxes found at an operating point.

    A box is found when a prediction of its class with score >= `conf` overlaps
    it by IoU >= `iou`; predictions are matched greedily by score, each to one
    box at most (as COCO matches). Classes without ground truth are left out.
    """
    found = torch.zeros(len(names))
    total = torch.zeros(len(names))
    for pred, target in zip(preds, targets, strict=True):
        total += torch.bincount(target["labels"], minlength=len(names))[:len(names)].float()
        keep = pred["scores"] >= conf
        boxes, scores, labels = pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep]
        for c in target["labels"].unique().tolist():
            gt = target["boxes"][target["labels"] == c]  # (M, 4)
            mine = labels == c
            if not bool(mine.any()):
                continue
            order = scores[mine].argsort(descending=True)
            overlaps = box_iou(boxes[mine][order], gt)  # (P, M)
            taken = torch.zeros(len(gt), dtype=torch.bool)
            for row in overlaps:
                row = row.masked_fill(taken, -1.0)
                j = int(row.argmax())
                if float(row[j]) >= iou:
                    taken[j] = True
            found[c] += float(taken.sum())
    return {names[c]: float(found[c] / total[c]) for c in range(len(names)) if total[c] > 0}


Sample = tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor]
"""(uint8 image (3, h, w), its (width, height), xyxy boxes (N, 4) in its pixels, labels (N,))."""


def dataset_samples(dataset: YoloDetectionDataset, to_model: torch.Tensor | None = None
                    ) -> Iterable[Sample]:
    """The samples of a data set, its class indices mapped through `to_model` if given."""
    for i in range(len(dataset)):
        image, boxes, labels = dataset.load(i)
        labels = labels if to_model is None else to_model[labels]
        yield image, (image.shape[-1], image.shape[-2]), boxes, labels


@torch.inference_mode()
def evaluate_predictor(predictor: DetectionPredictor, samples: Iterable[Sample], *,
                      batch_size: int = 16, conf: float = EVAL_CONF, iou: float = EVAL_IOU,
                      max_det: int = EVAL_MAX_DET) -> dict[str, Any]:
    """Run the served predict path (preprocess, forward, postprocess) and score it.

    Returns:
        `detection_metrics` plus ``num_images``, ``num_objects``, the settings used,
        and ``per_class_recall`` at the served default operating point (``recall_at``).
    """
    preds: list[dict[str, torch.Tensor]] = []
    targets: list[dict[str, torch.Tensor]] = []

    def flush(batch: list[Sample]) -> None:
        inputs, metas = zip(*(predictor.preprocess(im, original_size=size)
                              for im, size, _, _ in batch), strict=True)
        results = predictor.postprocess(predictor.forward(torch.stack(inputs)), list(metas),
                                        conf=conf, iou=iou, max_det=max_det)
        for dets, (_, _, boxes, labels) in zip(results, batch, strict=True):
            # The served response, back into tensors: exactly what a client gets.
            preds.append({"boxes": torch.tensor([d.box for d in dets]).reshape(-1, 4),
                          "scores": torch.tensor([d.score for d in dets]),
                          "labels": torch.tensor([d.class_id for d in dets], dtype=torch.long)})
            targets.append({"boxes": boxes.float(), "labels": labels.long()})

    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    report = detection_metrics(preds, targets, predictor.labels)
    report.update(num_images=len(targets), num_objects=sum(len(t["labels"]) for t in targets),
                  conf=conf, iou=iou, max_det=max_det,
                  per_class_recall=per_class_recall(preds, targets, predictor.labels),
                  recall_at={"conf": RECALL_CONF, "iou": RECALL_IOU})
    return report


def split_images(data_yaml: str | Path, split: str) -> tuple[list[Path], list[str]]:
    """The images of `split` (``train``, ``val``, ``test`` or any key) and the class names."""
    spec = load_data_yaml(data_yaml, check_labels=False)
    if split in ("train", "val"):
        images = spec.train if split == "train" else spec.val
    else:
        cfg = yaml.safe_load(Path(data_yaml).read_text())
        images = _split_images(cfg.get(split), spec.root, split, spec.yaml_path)
    if not images:
        raise DatasetError(f"{data_yaml}: split {split!r} has no images")
    return images, spec.names


def evaluate_data(predictor: DetectionPredictor, data: Path, *, split: str | None = None,
                  batch_size: int = 16, conf: float = EVAL_CONF, iou: float = EVAL_IOU,
                  max_det: int = EVAL_MAX_DET) -> dict[str, Any]:
    """`evaluate_predictor` on a split of a DATA.yaml (default ``val``), decoded as served.

    Every image file is read as the fit loop reads it (`training.images.read_image`:
    upright, a large JPEG at reduced scale for the model's input size) and
    predicted with the export's own preprocessing, so the figures are those of
    the served model and match the manifest's. Labels refer to the upright image.
    The data set's class names are matched to the model's labels by name.

    Returns:
        ``num_images``, ``num_objects``, ``map50``, ``map50_95``, ``precision``,
        ``recall``, ``per_class_ap``, ``per_class_ap50``, the settings, and ``labels``.

    Raises:
        DatasetError: A missing split, a malformed label row, or class names the
            model does not know.
    """
    split = split or "val"
    images, names = split_images(data, split)
    unknown = sorted(set(names) - set(predictor.labels))
    if unknown:
        raise DatasetError(f"{data}: classes {unknown} are not labels of the model "
                           f"({predictor.labels})")
    to_model = torch.tensor([predictor.labels.index(n) for n in names], dtype=torch.long)
    dataset = YoloDetectionDataset(images, len(names), img_size=predictor.input_size,
                                   cache_images=False)
    report = evaluate_predictor(predictor, dataset_samples(dataset, to_model),
                                batch_size=batch_size, conf=conf, iou=iou, max_det=max_det)
    report.update(split=split, labels=list(predictor.labels))
    return report
