"""Every backbone in the catalog, with random weights: it builds and runs, gives the pyramid
the detector needs, freezes the same uniform stages, computes what torchvision's network
computes, and round-trips through an export of each task to the served Predictor."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch
from helpers import make_classifier_export, make_detector_export
from torchvision import models as tvm

from models.backbones import create_backbone, list_backbones
from models.backbones.base import PYRAMID_STRIDES, STAGE_NAMES, Backbone
from models.backbones.catalog import pretrained_weights_file, uniform_trainable_stages
from models.detection.detector import Detector
from models.errors import BackboneArgumentError, OcellusError, WeightsUnavailableError
from models.predictor import load_predictor
from models.preprocess import Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")

# The smallest multiple of 32 each backbone takes, where 64 is too small; small inputs keep
# the suite fast (a ViT at 64 px also exercises its interpolated position embeddings).
SIZES = {"inception_v3": 96}
# torchvision's builder of each family it provides, with the arguments of its pretrained
# configuration (GoogLeNet and Inception-v3 transform their input, and their files hold the
# auxiliary classifiers).
TORCHVISION = {
    "alexnet": (tvm.alexnet, {}),
    "vgg16_bn": (tvm.vgg16_bn, {}),
    "googlenet": (tvm.googlenet, {"aux_logits": True, "transform_input": True,
                                  "init_weights": True}),
    "inception_v3": (tvm.inception_v3, {"aux_logits": True, "transform_input": True,
                                        "init_weights": True}),
    "densenet121": (tvm.densenet121, {}),
    "resnet18": (tvm.resnet18, {}),
    "resnet34": (tvm.resnet34, {}),
    "resnet50": (tvm.resnet50, {}),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, {}),
    "efficientnet_b0": (tvm.efficientnet_b0, {}),
    "convnext_tiny": (tvm.convnext_tiny, {}),
    "vit_b_16": (tvm.vit_b_16, {}),
}
# The export round trips and the torchvision comparisons take 0.5-5 s a backbone (ViT-B/16's
# export is 0.35 GB), about 40 s in all: `make test-fast` runs them for two families only,
# `make test` for every one.
FAST = {"resnet18", "efficientnet_lite0"}


def _marked(names) -> list:
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _size(name: str) -> int:
    return SIZES.get(name, 64)


def assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Close within 1e-5 of the largest magnitude: random deep networks reach huge
    activations (Inception-v3's logits ~1e8), where float32 rounding grows with them."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


class _Built(dict):
    """Backbones with random weights by name, each built on first use (eval mode)."""

    def __missing__(self, name: str) -> Backbone:
        torch.manual_seed(0)
        self[name] = create_backbone(name, weights=None).eval()
        return self[name]


@pytest.fixture(scope="module")
def built() -> _Built:
    return _Built()


def test_torchvision_table_covers_the_catalog() -> None:
    # efficientnet_lite0 is not torchvision's; tests/models/test_efficientnet_lite.py has it.
    assert set(TORCHVISION) | {"efficientnet_lite0"} == set(list_backbones())


@pytest.mark.parametrize("name", _marked(list_backbones()))
def test_builds_and_runs_with_the_pyramid_at_strides_8_16_32(name: str, built) -> None:
    backbone, size = built[name], _size(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pyramid = backbone.forward_pyramid(x)
        pooled = backbone(x)
    assert [tuple(p.shape) for p in pyramid] == [
        (2, c, size // s, size // s) for c, s in zip(backbone.pyramid_channels, PYRAMID_STRIDES,
                                                      strict=True)]
    assert pooled.shape == (2, backbone.num_features)
    assert backbone.name == name and backbone.stage_names == STAGE_NAMES
    pre = backbone.preprocessing
    assert pre.crop_size >= 224 and pre.resize_size >= pre.crop_size
    assert pre.interpolation in ("bilinear", "bicubic")
    if backbone.imagenet_head is not None:  # an ImageNet classifier can be rebuilt
        assert backbone.imagenet_head.in_features == backbone.num_features
        assert len(backbone.categories) == backbone.imagenet_head.out_features == 1000


@pytest.mark.parametrize("name", list_backbones())
def test_every_parameter_is_in_exactly_one_stage(name: str, built) -> None:
    backbone = built[name]
    in_stages = [id(p) for stage in backbone.stages().values() for p in stage.parameters()]
    outside = [n for n, p in backbone.named_parameters() if id(p) not in set(in_stages)]
    assert len(in_stages) == len(set(in_stages))
    assert all(n.startswith("imagenet_head.") for n in outside), outside


@pytest.mark.parametrize("name", list_backbones())
def test_freeze_k_trains_the_top_k_uniform_stages(name: str, built) -> None:
    backbone = built[name]
    try:
        for k in range(len(STAGE_NAMES) + 1):
            backbone.freeze(k)
            frozen = STAGE_NAMES[:len(STAGE_NAMES) - k]
            assert backbone.frozen_stages == frozen
            backbone.train()
            for name, stage in backbone.stages().items():
                assert all(p.requires_grad == (name not in frozen)
                           for p in stage.parameters()), (k, name)
                # Frozen stages keep their batch-norm statistics: eval mode under train().
                assert all(m.training == (name not in frozen) for attr in backbone.members(name)
                           for m in getattr(backbone, attr).modules())
        with pytest.raises(ValueError, match="between 0 and 5"):
            backbone.freeze(6)
    finally:
        backbone.unfreeze()
        backbone.eval()


@pytest.mark.parametrize("name,size,raw", [
    ("alexnet", 224, [27, 13, 6]),  # one cell short of 28, 14, 7
    ("inception_v3", 320, [37, 18, 8]),  # of 40, 20, 10
    ("googlenet", 320, [40, 20, 10]),  # ceil-mode pools: on the grid already
])
def test_unpadded_networks_are_padded_onto_the_stride_grid(name: str, size: int,
                                                           raw: list[int]) -> None:
    with torch.device("meta"):  # shapes only
        backbone = create_backbone(name, weights=None)
        x = torch.empty(1, 3, size, size)
        assert [m.shape[-1] for m in backbone.forward_stages(x)] == raw
        assert [m.shape[-1] for m in backbone.forward_pyramid(x)] == [
            size // s for s in PYRAMID_STRIDES]
        assert backbone.forward_features(x).shape[-1] == raw[-1]  # classification: unpadded


def _torchvision_file(name: str, net: torch.nn.Module, folder: Path) -> Path:
    """`net`'s state dict as the published files have it."""
    state = net.state_dict()
    if name == "densenet121":  # the published file predates "norm1" and num_batches_tracked
        state = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
                 for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = folder / f"{name}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", _marked(TORCHVISION))
def test_computes_what_torchvision_computes(name: str, tmp_path: Path) -> None:
    """Loaded from a torchvision-style file, the backbone (and its ImageNet head) gives
    torchvision's outputs, each with its own preprocessing of the same image."""
    builder, kwargs = TORCHVISION[name]
    torch.manual_seed(0)
    net = builder(weights=None, **kwargs).eval()
    backbone = create_backbone(name, weights=_torchvision_file(name, net, tmp_path)).eval()
    size = 224 if name == "vit_b_16" else _size(name)  # torchvision's ViT takes 224 only
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    theirs = Preprocessing().normalize(image)  # ImageNet mean and std, as torchvision's
    ours = backbone.preprocessing.normalize(image)
    with torch.no_grad():
        if backbone.imagenet_head is None:  # AlexNet, VGG: their convolutions
            expected, got = net.features(theirs), backbone.forward_features(ours)
        else:
            expected, got = net(theirs), backbone.imagenet_head(backbone(ours))
    assert_close_to_scale(got, expected)


@pytest.mark.parametrize("name", _marked(list_backbones()))
def test_classify_export_round_trip(name: str, tmp_path: Path) -> None:
    model = make_classifier_export(tmp_path / "export", name, size=_size(name))
    predictor = load_predictor(tmp_path / "export")
    image = torch.randint(0, 256, (3, 80, 120), dtype=torch.uint8)
    x, _ = predictor.preprocess(image)
    with torch.no_grad():
        expected = model(x[None])  # (1, 3)
    # The served path: channels_last, inference mode, rebuilt from the manifest alone.
    assert_close_to_scale(predictor.forward(x[None]), expected)


@pytest.mark.parametrize("name", _marked(list_backbones()))
def test_detect_export_round_trip(name: str, tmp_path: Path) -> None:
    size = _size(name)
    model = make_detector_export(tmp_path / "export", name, size=size)
    predictor = load_predictor(tmp_path / "export")
    assert predictor.input_size == size
    image = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    x, meta = predictor.preprocess(image)
    with torch.no_grad():
        expected = model(x[None])
    dist, cls, anchors, strides = predictor.forward(x[None])
    a = sum((size // s) ** 2 for s in PYRAMID_STRIDES)
    assert cls.shape == (1, a, 3) and anchors.shape == (1, a, 2)
    assert_close_to_scale(cls, expected.cls)
    assert_close_to_scale(dist, expected.dist)
    (dets,) = predictor.postprocess((dist, cls, anchors, strides), [meta], conf=0.0, max_det=5)
    assert len(dets) == 5 and all(0 <= d.box[0] <= d.box[2] <= 90 for d in dets)


@pytest.mark.parametrize("name", list_backbones())
def test_min_input_size_is_the_smallest_side_the_network_runs_on(name: str) -> None:
    with torch.device("meta"):  # shapes only: a side too small fails as it would on a device
        backbone = create_backbone(name, weights=None).eval()
        side = backbone.min_input_size
        assert backbone(torch.empty(1, 3, side, side)).shape == (1, backbone.num_features)
        if side > 1:
            with pytest.raises(BackboneArgumentError, match=f"at least {side} px"):
                backbone(torch.empty(1, 3, side - 1, side))
            backbone.check_input_size = lambda height, width: None  # the network, unchecked
            with pytest.raises(RuntimeError):
                backbone(torch.empty(1, 3, side - 1, side - 1))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_padded_networks_serve_a_native_28_px_export(name: str, tmp_path: Path) -> None:
    """Fashion-MNIST at its own 28 px: padded convolutions and pools take any side."""
    make_classifier_export(tmp_path / "export", name, size=28)
    predictor = load_predictor(tmp_path / "export")
    image = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    (result,) = predictor.predict([image], top_k=1)
    assert predictor.input_size == 28 and len(result) == 1


def test_inputs_a_backbone_cannot_take_are_refused_clearly() -> None:
    with pytest.raises(BackboneArgumentError, match="inception_v3 needs inputs of at least 75"):
        Detector("inception_v3", 2, img_size=64)
    vit = create_backbone("vit_b_16", weights=None)
    with pytest.raises(BackboneArgumentError, match="multiple of its 16 px patches, got 40x40"):
        vit(torch.randn(1, 3, 40, 40))
    with pytest.raises(BackboneArgumentError, match="between 0 and 5 for vit_b_16"):
        vit.freeze(9)  # efficientnet_lite0's old "all stages"
    # An expected error: the CLI prints it as one line (exit code 2), and a manifest
    # that asks for it fails as a bad export (models/factory.py catches ValueError).
    assert issubclass(BackboneArgumentError, OcellusError)
    assert issubclass(BackboneArgumentError, ValueError)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_pretrained_weights_are_read_from_the_hub_cache(name: str) -> None:
    path = pretrained_weights_file(name)
    assert path.parent == Path(torch.hub.get_dir()) / "checkpoints"
    assert path.suffix == ".pth" and name.split("_")[0] in path.name


@pytest.mark.parametrize("name,file", [("resnet50", "resnet50-11ad3fa6.pth"),
                                       ("convnext_tiny", "convnext_tiny-983f1562.pth")])
def test_offline_weights_name_the_file(name: str, file: str, torch_hub_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError(f"offline: no {url}")

    # Where torch.hub's load_state_dict_from_url (the weights enums') downloads a missing file.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone(name)
    assert pretrained_weights_file(name) == torch_hub_dir / "checkpoints" / file
    assert str(torch_hub_dir / "checkpoints" / file) in str(info.value)
    assert "offline: no https://" in str(info.value) and "--weights PATH" in str(info.value)


@pytest.mark.parametrize("name,recorded,frozen,uniform", [
    # efficientnet_lite0 before the uniform stages: nine of its own.
    ("efficientnet_lite0", 9, [], 5),
    ("efficientnet_lite0", 8, ["stem"], 5),
    ("efficientnet_lite0", 2, ["stem", *(f"stage{i}" for i in range(1, 7))], 1),
    ("efficientnet_lite0", 0, ["stem", *(f"stage{i}" for i in range(1, 8)), "head"], 0),
    # Uniform counts, and ResNets' (whose stages were these already), pass unchanged.
    ("efficientnet_lite0", 2, ["stem", "layer1", "layer2"], 2),
    ("resnet18", 5, [], 5),
    ("resnet18", 2, ["stem", "layer1", "layer2"], 2),
])
def test_recorded_trainable_stages_in_uniform_stages(name, recorded, frozen, uniform) -> None:
    assert uniform_trainable_stages(name, recorded, frozen) == uniform
