"""The classification predictor: resize and centre-crop, forward, softmax and top-k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.predictor import Predictor


@dataclass(frozen=True)
class Classification:
    """One class of a classification result."""

    label: str
    index: int
    score: float


class ClassificationPredictor(Predictor):
    """Resize and centre-crop, forward, softmax and top-k."""

    task = "classify"

    def preprocess(self, image: torch.Tensor, *, original_size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, None]:
        # Class scores do not depend on the original size: `original_size` is ignored.
        return self.preprocessing(image), None

    def postprocess(self, outputs: torch.Tensor, metas: list[Any], *, top_k: int = 5,
                    **_: Any) -> list[list[Classification]]:
        """Logits (B, K) → for each image the `top_k` classes, best first."""
        probs = outputs.float().softmax(dim=1).cpu()
        k = max(1, min(top_k, probs.shape[1]))
        scores, indices = probs.topk(k, dim=1)  # (B, k)
        return [
            [Classification(self.labels[i], i, float(s))
             for s, i in zip(row_s.tolist(), row_i.tolist(), strict=True)]
            for row_s, row_i in zip(scores, indices, strict=True)
        ]
