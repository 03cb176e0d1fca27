"""Each task's request options, one home for their names, bounds and meaning.

``/v1/classify`` and ``/v1/detect`` take them as query parameters (FastAPI reads
a model's fields as the query); ``/v2/models/{name}/infer`` takes the same
fields from the request's ``parameters`` object (service/routes/v2.py). Either
way `postprocess_options` turns them into the keyword arguments of the task's
`Predictor.postprocess`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.errors import RequestError
from service.settings import Settings

# What `parse_classes` reads ("0,2", "5", " 1 , 3,"); the OpenAPI schema says the same.
CLASS_IDS = re.compile(r"^ *([0-9]+ *)?(, *([0-9]+ *)?)*$")
ClassIds = Annotated[str, WithJsonSchema({"type": "string", "pattern": CLASS_IDS.pattern})]


def parse_classes(values: list[str] | None, num_classes: int) -> list[int] | None:
    """``["0,2", "5"]`` → ``[0, 2, 5]``; every id must be a class index of the model.

    Raises:
        RequestError: A value that is not an integer, or an id out of range (422).
    """
    if not values:
        return None
    for value in values:
        if not CLASS_IDS.fullmatch(value):
            raise RequestError(f"classes: expected comma-separated class ids (integers), "
                               f"got {value!r}")
    ids = [int(p) for v in values for p in v.split(",") if p.strip()]
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise RequestError(f"classes: ids {bad} are out of range; the model has {num_classes} "
                           f"classes (ids 0..{num_classes - 1})")
    return ids or None


class ClassifyOptions(BaseModel):
    """How many classes to return per image."""

    model_config = ConfigDict(extra="ignore")

    top_k: int | None = Field(
        None, ge=1, le=1000, description="classes per image; default OCELLUS_DEFAULT_TOP_K (5)")

    def postprocess_options(self, settings: Settings, num_classes: int) -> dict[str, Any]:
        return {"top_k": self.top_k or settings.default_top_k}


class DetectOptions(BaseModel):
    """Thresholds, NMS and class filter of a detection request."""

    model_config = ConfigDict(extra="ignore")

    conf: float = Field(0.25, ge=0, le=1, description="score threshold")
    iou: float = Field(0.45, ge=0, le=1, description="NMS IoU threshold")
    max_det: int = Field(300, ge=1, le=1000, description="detections per image")
    classes: list[ClassIds] | None = Field(
        None, description="keep only these class ids: comma-separated and/or repeated")
    agnostic: bool = Field(False, description="NMS across classes")
    multi_label: bool | None = Field(
        None, description="every class above conf at a location is a candidate, not only the "
        "best one; default: the model's own way (true for NanoDet, as upstream; false for "
        "the YOLO-style detector, as Ultralytics)")

    def postprocess_options(self, settings: Settings, num_classes: int) -> dict[str, Any]:
        """The postprocess keyword arguments.

        Raises:
            RequestError: A class id that is not an integer or not one of the model's (422).
        """
        return {"conf": self.conf, "iou": self.iou, "max_det": self.max_det,
                "classes": parse_classes(self.classes, num_classes),
                "agnostic": self.agnostic, "multi_label": self.multi_label}


# Each task's options, by task name (models/tasks.py).
OPTIONS: dict[str, type[ClassifyOptions] | type[DetectOptions]] = {
    "classify": ClassifyOptions, "detect": DetectOptions}
