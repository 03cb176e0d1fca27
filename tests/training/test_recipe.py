"""The transfer-learning recipe's parts: the weights' EMA, layer-wise learning rates, mixing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.classification.classifier import ImageClassifier
from models.errors import CheckpointError
from models.predictor import load_predictor
from training.classify.train import _param_groups, batch_mixer, get_args_parser, main
from training.ema import ModelEMA


def test_ema_follows_the_weights_with_a_warmed_up_decay() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(net, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].num_batches_tracked += 5
    ema.update(net)
    d = min(0.9, 2 / 11)  # (1 + n) / (10 + n) after the first update
    assert torch.allclose(ema.module[0].weight, d * start["0.weight"] + (1 - d) * net[0].weight)
    assert ema.module[1].num_batches_tracked == 5  # counters are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(200):
        ema.update(net)
    assert torch.allclose(ema.module[0].weight, net[0].weight, atol=1e-6)
    restored = ModelEMA(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 201
    assert torch.equal(restored.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(net, decay=1.0)


def test_layer_decay_gives_each_trainable_stage_its_rate() -> None:
    model = ImageClassifier("resnet18", 3, backbone_weights=None)
    model.backbone.freeze(3)  # layer2, layer3, layer4 train
    args = get_args_parser().parse_args(["--data", "x", "--out", "y", "--lr", "1e-2",
                                         "--backbone-lr-scale", "0.5", "--layer-decay", "0.5"])
    groups = _param_groups(model, args)
    assert [g["lr"] for g in groups] == [1e-2, 5e-3, 2.5e-3, 1.25e-3]  # head, layer4, 3, 2
    stages = model.backbone.stages()
    assert [len(g["params"]) for g in groups[1:]] == [
        len(list(stages[s].parameters())) for s in ("layer4", "layer3", "layer2")]


def test_mixing_blends_images_and_targets() -> None:
    args = get_args_parser().parse_args(["--data", "x", "--out", "y", "--mixup", "0.4",
                                         "--cutmix", "1.0"])
    mix = batch_mixer(args, num_classes=4)
    images, targets = mix(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert images.shape == (6, 3, 8, 8) and targets.shape == (6, 4)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert (targets.max(1).values < 1).all()  # each a blend of two classes, not one-hot

    args.cutmix = 0.0  # mixup alone: every image a blend with its neighbour in the batch
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    images, targets = batch_mixer(args, num_classes=4)(x, y)
    lam = targets[0, 0]  # each image keeps lam of its own class, 1 - lam of the one before
    assert torch.allclose(targets, lam * nn.functional.one_hot(y, 4)
                          + (1 - lam) * nn.functional.one_hot(y.roll(1), 4))
    assert torch.allclose(images, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    args.mixup = args.cutmix = 0.0
    assert batch_mixer(args, num_classes=4) is None


@pytest.mark.slow  # trains
def test_the_export_is_the_ema_and_resume_continues_it(tmp_path: Path, make_shapes_tree) -> None:
    data = make_shapes_tree(tmp_path / "data", per_class=6)
    out = tmp_path / "export"
    base = ["--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights",
            "none", "--trainable-stages", "5", "--img-size", "32", "--batch-size", "4",
            "--ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "1.0", "--layer-decay", "0.8",
            "--no-progress"]
    main(get_args_parser().parse_args([*base, "--epochs", "1"]))
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["ema"]["updates"] == 3  # 15 training images: 3 full batches of 4
    resumed = main(get_args_parser().parse_args(
        [*base, "--epochs", "2", "--resume", str(out / "checkpoints" / "last.pt")]))
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["ema"]["updates"] == 6  # continued, not restarted

    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    served = load_predictor(out).model.state_dict()
    weight = "backbone.layer4.1.conv2.weight"
    assert torch.equal(served[weight], best["ema"]["module"][weight])
    assert not torch.equal(served[weight], best["model"][weight])  # the average, not the model
    assert resumed.training["args"]["ema_decay"] == 0.9

    # A checkpoint without an average (one written with --ema-decay 0) starts it at its
    # weights; one whose optimiser trains other stages is refused, naming the options.
    plain = out / "checkpoints" / "plain.pt"
    torch.save({**last, "ema": None}, plain)
    main(get_args_parser().parse_args([*base, "--epochs", "3", "--resume", str(plain)]))
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["ema"]["updates"] == 3  # one epoch since the resume
    with pytest.raises(CheckpointError, match="--trainable-stages 5"):
        main(get_args_parser().parse_args(
            [*base, "--trainable-stages", "2", "--epochs", "3", "--resume", str(plain)]))


def test_crop_scale_must_be_a_fraction_of_the_image(capsys: pytest.CaptureFixture) -> None:
    for bad in ("0", "1.5", "-0.2", "abc"):
        with pytest.raises(SystemExit):
            get_args_parser().parse_args(["--data", "x", "--out", "y", "--crop-scale", bad])
        assert "expected a fraction in (0, 1]" in capsys.readouterr().err
    for bad in ("1", "1.5", "-0.1", "x"):  # checked before any process starts training
        with pytest.raises(SystemExit):
            get_args_parser().parse_args(["--data", "x", "--out", "y", "--ema-decay", bad])
        assert "expected 0 or a decay in (0, 1)" in capsys.readouterr().err
