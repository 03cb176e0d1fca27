"""Where pretrained weights come from: the torch hub cache, a download, or a local file."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch

from models.errors import WeightsUnavailableError


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
