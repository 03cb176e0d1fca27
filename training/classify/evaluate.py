"""Evaluate a classifier through its `Predictor`: exactly what the service serves.

`evaluate_classifier` scores a list of samples (the fit loop's val split);
`evaluate_data` is ``ocellus evaluate``'s entry point (the task table's
``evaluate``): an export's predictor on an ImageFolder tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from models.classification.predictor import ClassificationPredictor
from models.errors import DatasetError
from training.classify.data import ImageListDataset, Sample, scan_image_folder


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
    # Decoded as the service decodes an upload: the score is that of what is served.
    dataset = ImageListDataset(samples, lambda im: predictor.preprocess(im)[0],
                               decode_size=predictor.preprocessing.decode_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
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


def evaluate_data(predictor: ClassificationPredictor, data: Path, *, split: str | None = None,
                  batch_size: int = 64) -> dict[str, Any]:
    """`evaluate_classifier` on an ImageFolder tree: ``data/split``, else its ``val/``, else all.

    Class folders are matched to the model's labels by name; a folder may be
    missing, but not unknown.

    Raises:
        DatasetError: A class folder that is not a label of the model.
    """
    root = data / split if split else (data / "val" if (data / "val").is_dir() else data)
    classes, samples = scan_image_folder(root)
    if classes != predictor.labels:
        unknown = sorted(set(classes) - set(predictor.labels))
        if unknown:
            raise DatasetError(f"{root}: class folders {unknown} are not labels of the model "
                               f"({predictor.labels})")
        samples = [(p, predictor.labels.index(classes[t])) for p, t in samples]
    return evaluate_classifier(predictor, samples, batch_size=batch_size)
