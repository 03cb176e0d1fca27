"""Where pretrained weights come from: the torch hub cache, a download, or a local file.

A torchvision weights enum is data that carries its own preprocessing and class
names; `preprocessing_of` reads the former, so no family types it twice.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from models.backbones.catalog import Weights
from models.errors import WeightsUnavailableError
from models.preprocess import Preprocessing


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt`` or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept training checkpoints ({"model": state_dict, ...}) as well as bare state dicts.
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(
            f"expected a state dict in {path}, got {type(state).__name__}"
        )
    return state


def hub_cache_path(url: str) -> Path:
    """The file torch.hub keeps a download of `url` in."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hub_file(weights_enum) -> Callable[[], Path]:
    """`add_backbone`'s ``weights_file`` for a torchvision weights enum: its hub-cache file."""
    return lambda: hub_cache_path(weights_enum.url)


def fetch_torchvision_weights(weights_enum, *, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum, from the hub cache or a download.

    Offline with nothing cached, the error names the exact file to supply.
    """
    url = weights_enum.url
    cached = hub_cache_path(url)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {model_name} ({weights_enum}) are not in the torch hub cache "
            f"and could not be downloaded: {exc}. Supply the file by downloading {url} and "
            f"saving it as {cached} (folder {cached.parent}, or set TORCH_HOME), or pass a "
            f"local state dict with --weights PATH."
        ) from exc


def preprocessing_of(weights_enum) -> Preprocessing:
    """The eval transform of a torchvision weights enum (its ``transforms()``) as data."""
    t = weights_enum.transforms()
    return Preprocessing(
        crop_size=t.crop_size[0],
        resize_size=t.resize_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def without_keys(*prefixes: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """`load_torchvision_weights`'s ``adapt``: drop the keys under `prefixes` (the parts
    of a published file a backbone does not keep: auxiliary heads, a dropped classifier)."""
    return lambda state: {k: v for k, v in state.items() if not k.startswith(prefixes)}


def load_torchvision_weights(
        net: nn.Module, weights: Weights, weights_enum, *, model_name: str,
        adapt: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
) -> None:
    """Fill a torchvision model built with ``weights=None``.

    Args:
        net: The model.
        weights: ``"imagenet"`` (`weights_enum`'s file, from the hub cache or a
            download), a path to a state dict with torchvision's keys, or None
            (keep the random initialisation).
        weights_enum: The torchvision weights enum of the ImageNet weights.
        model_name: The backbone's name, for messages.
        adapt: Changes the state dict before loading (drop keys, rename old ones).
    """
    if weights is None:
        return
    if weights == "imagenet":
        state = fetch_torchvision_weights(weights_enum, model_name=model_name)
    else:
        state = load_state_dict_file(weights)
    net.load_state_dict(adapt(state) if adapt else state)
