"""Evaluate a classifier through its `Predictor`: exactly what the service serves."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from models.classification.predictor import ClassificationPredictor
from training.classify.data import ImageListDataset, Sample


@torch.inference_mode()
def evaluate_classifier(predictor: ClassificationPredictor, samples: list[Sample], *,
                        batch_size: int = 64, workers: int = 0) -> dict[str, Any]:
    """Top-1, top-5, per-class precision and recall, and the confusion matrix.

    Images go through the predictor's own preprocess, forward and postprocess.

    Returns:
        A JSON-able dict. ``confusion_matrix[i][j]`` counts images of class i
        predicted as class j.
    """
    labels = predictor.labels
    k = len(labels)
    loader = DataLoader(ImageListDataset(samples, lambda im: predictor.preprocess(im)[0]),
                        batch_size=batch_size, num_workers=workers)
    confusion = torch.zeros(k, k, dtype=torch.long)
    top1 = top5 = 0
    for batch, targets in loader:
        results = predictor.postprocess(predictor.forward(batch), [None] * len(batch),
                                        top_k=5)
        for result, target in zip(results, targets.tolist(), strict=True):
            indices = [c.index for c in result]
            confusion[target, indices[0]] += 1
            top1 += indices[0] == target
            top5 += target in indices
    n = int(confusion.sum())
    tp = confusion.diag().float()
    predicted = confusion.sum(0).float()
    actual = confusion.sum(1).float()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    return {
        "num_images": n,
        "top1": top1 / max(n, 1),
        "top5": top5 / max(n, 1),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "support": int(actual[i])}
            for i, label in enumerate(labels)
        },
        "labels": labels,
        "confusion_matrix": confusion.tolist(),
    }
