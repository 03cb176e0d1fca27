"""Assigner, loss and the fit loop on tiny generated data (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from models.detection import Detector, make_anchors
from models.detection.predictor import DetectionPredictor
from models.export import Manifest
from training.detection.assign import TaskAlignedAssigner
from training.detection.loss import DetectionLoss
from training.detection.train import get_args_parser, load_detector_checkpoint, main


def test_assigner_picks_anchors_inside_the_box_and_resolves_conflicts() -> None:
    anchors, _ = make_anchors([(4, 4)], [8])  # centres at 4, 12, 20, 28
    a = anchors.shape[0]
    gt_boxes = torch.tensor([[[0.0, 0, 16, 16], [8, 0, 32, 16], [0, 0, 0, 0]]])
    gt_labels = torch.tensor([[1, 0, 0]])
    gt_mask = torch.tensor([[True, True, False]])  # the third object is padding
    pd_scores = torch.full((1, a, 2), 0.5)
    pd_boxes = torch.tensor([[0.0, 0, 16, 16]]).repeat(1, a, 1)  # every anchor predicts gt 0
    t = TaskAlignedAssigner(topk=10)(pd_scores, pd_boxes, anchors, gt_labels, gt_boxes, gt_mask)
    fg = t.fg[0].nonzero().flatten().tolist()
    # Inside gt 0: anchors 0, 1, 4, 5; inside gt 1: 1, 2, 3, 5, 6, 7. Anchors 1 and 5 are in
    # both and go to gt 0, the box their prediction overlaps most.
    assert fg == [0, 1, 2, 3, 4, 5, 6, 7]
    assert t.gt_index[0, [0, 1, 4, 5]].tolist() == [0, 0, 0, 0]
    assert t.gt_index[0, [2, 3, 6, 7]].tolist() == [1, 1, 1, 1]
    assert torch.equal(t.boxes[0, 1], gt_boxes[0, 0]) and torch.equal(t.boxes[0, 2], gt_boxes[0, 1])
    # Soft targets sit on the assigned class only; gt 0's best anchor gets its IoU (1.0).
    assert t.scores[0, :, 0][[0, 1, 4, 5]].eq(0).all() and t.scores[0, :, 1][[2, 3]].eq(0).all()
    assert t.scores[0, 0, 1] == torch.tensor(1.0)
    assert t.scores[0, 8:].eq(0).all()


@pytest.mark.slow  # trains
def test_loss_overfits_one_image_and_the_detection_lands_on_the_box() -> None:
    torch.manual_seed(0)
    model = Detector("resnet18", num_classes=2, img_size=64, width=16)
    image = torch.full((1, 3, 64, 64), 20, dtype=torch.uint8)
    image[..., 16:48, 8:40] = 230  # one bright square, class 1
    target = torch.tensor([[0.0, 1, 8, 16, 40, 48]])
    x = model.preprocessing.normalize(image)
    loss_fn = DetectionLoss(model.reg_max)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = loss_fn(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    manifest = Manifest(task="detect", architecture={"name": "detector", "args": model.model_args},
                        labels=["a", "b"], preprocessing=model.preprocessing.to_dict())
    [dets] = DetectionPredictor(model, manifest).predict([image[0]], conf=0.1)
    assert dets[0].class_id == 1
    assert float(box_iou(torch.tensor([dets[0].box]), target[:, 2:])) > 0.6


@pytest.mark.slow  # trains
def test_train_resume_and_frozen_stages(tmp_path: Path, make_rectangles_yaml) -> None:
    data = make_rectangles_yaml(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
            "--trainable-stages", "2", "--img-size", "64", "--batch-size", "4", "--width", "16",
            "--lr", "2e-3", "--seed", "3", "--no-progress"]
    first = main(get_args_parser().parse_args([*argv, "--epochs", "1"]))
    last_path = out / "checkpoints" / "last.pt"
    assert last_path.is_file() and (out / "checkpoints" / "best.pt").is_file()
    assert [h["epoch"] for h in first.training["history"]] == [0]
    assert first.labels == ["blue", "red"] and first.training["args"]["trainable_stages"] == 2
    assert set(first.metrics["val"]) >= {"map50", "map50_95", "precision", "recall",
                                         "per_class_ap"}

    resumed = main(get_args_parser().parse_args([*argv, "--epochs", "3", "--resume",
                                                 str(last_path)]))
    # Continued, not restarted.
    assert [h["epoch"] for h in resumed.training["history"]] == [0, 1, 2]
    last = torch.load(last_path, weights_only=True)
    assert last["epoch"] == 2
    assert set(last) >= {"model", "optimizer", "lr_scheduler", "epoch", "args", "model_args"}
    steps_per_epoch = 2  # 8 images, batch 4
    assert last["lr_scheduler"]["last_epoch"] == 3 * steps_per_epoch

    # Only the top 2 stages (layer3, layer4) moved; the rest kept the seed's init.
    torch.manual_seed(3)
    init = Detector("resnet18", 2, img_size=64, width=16).state_dict()
    model, ckpt = load_detector_checkpoint(last_path)
    trained = model.state_dict()
    assert torch.equal(trained["backbone.layer2.0.conv1.weight"],
                       init["backbone.layer2.0.conv1.weight"])
    assert torch.equal(trained["backbone.stem.0.weight"], init["backbone.stem.0.weight"])
    assert not torch.equal(trained["backbone.layer4.0.conv1.weight"],
                           init["backbone.layer4.0.conv1.weight"])
    assert ckpt["model_args"] == resumed.architecture["args"] == model.model_args


def test_per_class_recall_counts_each_box_once_at_the_operating_point() -> None:
    from training.detection.evaluate import per_class_recall

    gt = {"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
          "labels": torch.tensor([0, 0, 1])}
    pred = {"boxes": torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30],
                                   [50, 50, 60, 60], [50, 50, 60, 60]]),
            "scores": torch.tensor([0.9, 0.8, 0.1, 0.9, 0.9]),
            "labels": torch.tensor([0, 0, 0, 0, 2])}
    # Class 0: the duplicate cannot take the second box, and 0.1 is under conf;
    # class 1: only wrong-class predictions overlap it; class 2 has no ground truth.
    assert per_class_recall([pred], [gt], ["a", "b", "c"]) == {"a": 0.5, "b": 0.0}
    assert per_class_recall([pred], [gt], ["a", "b", "c"], conf=0.05) == {"a": 1.0, "b": 0.0}
