"""``ocellus retrain``: promote a better candidate, keep the champion over a worse one."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main as ocellus
from models.export import MANIFEST_FILE
from models.registry import ModelRegistry
from training.retrain import (
    BEFORE_RECORDED,
    EXIT_ERROR,
    EXIT_KEPT,
    EXIT_PROMOTED,
    JOB_OPTIONS,
    candidate_args,
    decide,
)

COLORS = {"blue": (30, 40, 200), "green": (30, 180, 40), "red": (210, 30, 30)}


def color_tree(root: Path, per_class: int, seed: int, *, shuffle_labels: bool = False) -> Path:
    """An ImageFolder of noisy solid-colour 32 px squares; labels optionally shuffled."""
    rng = np.random.default_rng(seed)
    items = [(name, rgb) for name, rgb in COLORS.items() for _ in range(per_class)]
    folders = [name for name, _ in items]
    if shuffle_labels:
        random.Random(seed).shuffle(folders)
    for i, ((_, rgb), folder) in enumerate(zip(items, folders, strict=True)):
        pixels = np.clip(np.array(rgb) + rng.integers(-40, 40, (32, 32, 3)), 0, 255)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(root / folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def registry_with_weak_champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose current version barely trained (1 epoch at a tiny learning rate)."""
    from training.classify.train import get_args_parser, main

    tmp = tmp_path_factory.mktemp("retrain")
    data = color_tree(tmp / "data0", 10, seed=0)
    export = tmp / "champion"
    main(get_args_parser().parse_args([
        "--data", str(data), "--out", str(export), "--backbone", "efficientnet_lite0",
        "--mode", "feature-extract", "--epochs", "1", "--lr", "1e-6", "--img-size", "64",
        "--batch-size", "16", "--augment", "none", "--name", "colors"]))
    registry = ModelRegistry(tmp / "registry")
    registry.promote("colors", registry.publish("colors", export))
    return tmp


@pytest.mark.slow
def test_better_candidate_is_promoted_then_worse_one_refused(
        registry_with_weak_champion: Path) -> None:
    tmp = registry_with_weak_champion
    registry = ModelRegistry(tmp / "registry")
    eval_set = color_tree(tmp / "eval", 8, seed=99)
    common = ["retrain", "--registry", str(tmp / "registry"), "--name", "colors",
              "--eval-data", str(eval_set), "--epochs", "4", "--lr", "3e-3"]

    report1 = tmp / "good.json"
    code = ocellus([*common, "--data", str(color_tree(tmp / "good", 20, seed=1)),
                    "--min-gain", "0.05", "--max-class-drop", "1.0",
                    "--report", str(report1)])
    good = json.loads(report1.read_text())
    assert code == EXIT_PROMOTED, good
    assert good["promote"] and good["promoted_version"] == "2"
    assert good["candidate"]["top1"] >= good["champion"]["top1"] + 0.05
    assert registry.current("colors") == "2"
    assert registry.verify("colors", "2").provenance["retrained_from"] == "1"

    report2 = tmp / "shuffled.json"
    code = ocellus([*common, "--data", str(color_tree(tmp / "shuffled", 20, seed=2,
                                                      shuffle_labels=True)),
                    "--report", str(report2)])
    bad = json.loads(report2.read_text())
    assert code == EXIT_KEPT, bad
    assert not bad["promote"] and bad["promoted_version"] is None
    assert bad["candidate"]["top1"] < bad["champion"]["top1"], bad
    assert bad["reasons"]
    assert registry.current("colors") == "2"
    assert registry.versions("colors") == ["1", "2"]


def test_a_second_job_is_locked_out(tmp_path: Path, tiny_classifier,
                                    capsys: pytest.CaptureFixture) -> None:
    """While a job holds the name's lock, a second one stops at once, says why, and writes
    nothing."""
    export, _ = tiny_classifier
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("shapes", registry.publish("shapes", export))
    capsys.readouterr()
    with registry.lock("shapes"):
        code = ocellus(["retrain", "--registry", str(tmp_path / "registry"), "--name", "shapes",
                        "--data", str(tmp_path / "new-data")])
    assert code == EXIT_ERROR
    lock = tmp_path / "registry" / "shapes" / ".job.lock"
    assert f"error: another job holds {lock}; wait for it to finish" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "shapes" / "reports").exists()
    assert not (tmp_path / "registry" / "shapes" / ".tmp").exists()
    assert registry.versions("shapes") == ["1"]


def test_decision_floors() -> None:
    champ = {"top1": 0.8, "per_class": {"a": {"recall": 0.9}, "b": {"recall": 0.7}}}
    better = {"top1": 0.9, "per_class": {"a": {"recall": 1.0}, "b": {"recall": 0.8}}}
    one_class_worse = {"top1": 0.9, "per_class": {"a": {"recall": 1.0}, "b": {"recall": 0.5}}}
    kw = {"min_gain": 0.05, "min_class_recall": 0.0, "max_class_drop": 0.1}
    assert decide(champ, better, **kw)["promote"]
    verdict = decide(champ, one_class_worse, **kw)
    assert not verdict["promote"] and "'b'" in verdict["reasons"][0]
    assert not decide(champ, better, **{**kw, "min_gain": 0.2})["promote"]
    assert not decide(champ, better, **{**kw, "min_class_recall": 0.85})["promote"]


@pytest.mark.slow
def test_an_int8_champion_is_met_by_an_int8_candidate_under_its_gate(
        registry_with_weak_champion: Path) -> None:
    """A model served at int8 is compared with, and replaced by, its candidate quantized
    under the champion's own gate; a candidate that the gate refuses is not promoted."""
    tmp = registry_with_weak_champion
    int8 = tmp / "champion-int8"
    # The weak champion's val scores are near chance: a gate of 1 lets any drop pass.
    assert ocellus(["quantize", "--model", str(tmp / "champion"), "--out", str(int8),
                    "--max-drop", "1", "--max-class-drop", "1"]) == 0
    registry = ModelRegistry(tmp / "registry-int8")
    registry.promote("colors", registry.publish("colors", int8))
    common = ["retrain", "--registry", str(tmp / "registry-int8"), "--epochs", "4",
              "--lr", "3e-3", "--data", str(color_tree(tmp / "int8-data", 20, seed=3)),
              "--max-class-drop", "1.0"]

    code = ocellus([*common, "--name", "colors", "--min-gain", "0.05",
                    "--report", str(tmp / "int8.json")])
    report = json.loads((tmp / "int8.json").read_text())
    assert code == EXIT_PROMOTED, report
    assert report["champion"]["precision"] == report["candidate"]["precision"] == "int8"
    quantization = report["candidate_quantization"]
    assert quantization["accepted"] and quantization["reasons"] == []
    assert quantization["gate"] == {"max_drop": 1.0, "max_class_drop": 1.0}  # the champion's
    promoted = registry.verify("colors", "2")
    assert promoted.precision == "int8" and promoted.quantization["drop"] == quantization["drop"]
    assert report["candidate"]["top1"] >= report["champion"]["top1"] + 0.05

    # A champion whose gate no candidate can pass (a drop above -1 is refused).
    strict = tmp / "strict-int8"
    shutil.copytree(int8, strict)
    manifest = json.loads((strict / MANIFEST_FILE).read_text())
    manifest["quantization"]["gate"]["max_drop"] = -1.0
    (strict / MANIFEST_FILE).write_text(json.dumps(manifest))
    registry.promote("strict", registry.publish("strict", strict))
    code = ocellus([*common, "--name", "strict", "--min-gain", "-1",
                    "--report", str(tmp / "strict.json")])
    report = json.loads((tmp / "strict.json").read_text())
    assert code == EXIT_KEPT, report
    assert not report["candidate_quantization"]["accepted"]
    assert report["reasons"][0].startswith("the champion serves int8 and the candidate's "
                                           "int8 was refused: top1 fell by"), report["reasons"]
    assert report["candidate"]["precision"] == "fp32"  # scored for the report, not promoted
    assert registry.versions("strict") == ["1"] and registry.current("strict") == "1"


@pytest.mark.slow
def test_a_job_killed_at_any_point_leaves_the_registry_valid(
        registry_with_weak_champion: Path) -> None:
    """SIGKILL the job at spread-out moments (training, evaluation, publishing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp = registry_with_weak_champion
    registry = ModelRegistry(tmp / "registry")
    data = color_tree(tmp / "kill-data", 12, seed=5)
    cmd = [sys.executable, "-m", "cli.main", "retrain", "--registry", str(tmp / "registry"),
           "--name", "colors", "--data", str(data), "--epochs", "2", "--min-gain", "-1",
           "--max-class-drop", "1.0"]
    repo = Path(__file__).resolve().parents[2]
    started = time.monotonic()
    # A full run first (it promotes: --min-gain -1), to know how long a job takes.
    assert subprocess.run(cmd, cwd=repo, capture_output=True, timeout=600).returncode == 0
    duration = time.monotonic() - started
    for fraction in (0.3, 0.7, 0.95):
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        current = registry.current("colors")
        assert current is not None
        registry.verify("colors", current)  # hash and manifest check out
        for version in registry.versions("colors"):
            registry.verify("colors", version)  # no half-written version is listed
        with registry.lock("colors"):  # the killed job's flock went with it
            pass
    print(f"job {duration:.1f} s; versions after the kills {registry.versions('colors')}, "
          f"current {registry.current('colors')}")
    # And the next job runs normally on what the killed ones left (in process: the
    # console script was run above).
    assert ocellus(cmd[3:]) == EXIT_PROMOTED


@pytest.mark.slow
def test_the_next_job_removes_what_a_killed_job_left(registry_with_weak_champion: Path) -> None:
    """Work folders live in REGISTRY/<name>/.tmp; the next job, under the lock, clears it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp = registry_with_weak_champion
    work = tmp / "registry" / "colors" / ".tmp"
    common = ["retrain", "--registry", str(tmp / "registry"), "--name", "colors", "--data",
              str(color_tree(tmp / "leftover-data", 8, seed=7)), "--dry-run"]
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *common, "--epochs", "50"],
                            cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not list(work.glob("retrain-*/candidate/checkpoints/last.pt")):
            assert proc.poll() is None and time.monotonic() < end, "no checkpoint in .tmp"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    (left,) = work.iterdir()
    assert left.name.startswith(f"retrain-{proc.pid}-")
    assert ocellus([*common, "--epochs", "1"]) == EXIT_KEPT  # a dry run keeps the champion
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_a_candidate_trains_with_the_champions_recipe_and_the_jobs_overrides(
        task: str, tiny_classifier, tiny_detector, tmp_path: Path) -> None:
    from models.tasks import get_task, resolve

    champion_path, champion = tiny_classifier if task == "classify" else tiny_detector
    parser = resolve(get_task(task).train).get_args_parser()
    job = argparse.Namespace(data=tmp_path / "new", name="colors", device="cpu", epochs=7,
                             lr=None, time_budget=2.5)
    args = candidate_args(parser, champion, champion_path, job, tmp_path / "candidate")
    recipe = champion.training["args"]
    assert set(vars(args)) == set(recipe)  # every option of the command, nothing else
    for key, value in vars(args).items():
        if key not in JOB_OPTIONS | {"epochs"}:
            assert value == recipe[key], key
    assert (args.data, args.out) == (job.data, tmp_path / "candidate")
    assert (args.weights, args.init_from, args.name) == ("none", champion_path, "colors")
    assert (args.epochs, args.lr, args.time_budget) == (7, recipe["lr"], 2.5)
    assert args.no_progress and args.resume is None
    assert args.img_size == champion.preprocessing["crop_size"]


def test_options_a_champion_never_recorded_keep_what_its_run_did(tiny_classifier,
                                                                 tmp_path: Path) -> None:
    """A champion trained before --crop-scale, --ema-decay, mixing and layer decay existed
    retrains as it trained (crops from 25% of the area, no EMA), not with today's defaults."""
    from dataclasses import replace

    from training.classify.train import get_args_parser

    path, manifest = tiny_classifier
    older = {k: v for k, v in manifest.training["args"].items() if k not in BEFORE_RECORDED}
    champion = replace(manifest, training={**manifest.training, "args": older})
    job = argparse.Namespace(data=tmp_path / "new", name="colors", device="cpu", epochs=None,
                             lr=None, time_budget=None)
    args = candidate_args(get_args_parser(), champion, path, job, tmp_path / "candidate")
    assert {k: getattr(args, k) for k in BEFORE_RECORDED} == BEFORE_RECORDED
    assert get_args_parser().get_default("crop_scale") != 0.25  # today's default differs
    recorded = replace(manifest, training={**manifest.training, "args": {
        **manifest.training["args"], "ema_decay": 0.99}})
    args = candidate_args(get_args_parser(), recorded, path, job, tmp_path / "candidate")
    assert args.ema_decay == 0.99  # what was recorded wins


@pytest.mark.parametrize("mode,recorded,frozen,expected,logged", [
    # All nine of efficientnet_lite0's stages of before: all five uniform ones.
    ("fine-tune", 9, [], 5, True),
    ("fine-tune", 2, ["stem", *(f"stage{i}" for i in range(1, 7))], 1, True),  # stage7, head
    ("fine-tune", 2, ["stem", "layer1", "layer2"], 2, False),  # uniform: unchanged
    ("feature-extract", 9, [], 5, False),  # the mode freezes every stage: nothing to tell
])
def test_a_champions_trainable_stages_of_before_the_uniform_stages_are_translated(
        mode: str, recorded: int, frozen: list[str], expected: int, logged: bool,
        tiny_classifier, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from training.classify.train import get_args_parser

    path, manifest = tiny_classifier
    champion = replace(
        manifest,
        architecture={**manifest.architecture,
                      "args": {**manifest.architecture["args"], "backbone": "efficientnet_lite0"}},
        training={**manifest.training, "frozen_stages": frozen,
                  "args": {**manifest.training["args"], "mode": mode,
                           "trainable_stages": recorded}})
    job = argparse.Namespace(data=tmp_path / "new", name="colors", device="cpu", epochs=None,
                             lr=None, time_budget=None)
    with caplog.at_level("INFO", logger="training.retrain"):
        args = candidate_args(get_args_parser(), champion, path, job, tmp_path / "candidate")
    assert (args.backbone, args.trainable_stages) == ("efficientnet_lite0", expected)
    assert ("--trainable-stages" in caplog.text) == logged


@pytest.mark.slow
def test_the_jobs_phases_are_traced(registry_with_weak_champion: Path) -> None:
    """With OTEL_* set, one trace: retrain → train, evaluate champion, evaluate candidate,
    decide, promote; received over OTLP/HTTP and decoded with opentelemetry-proto."""
    import os
    import subprocess
    import sys
    import time

    from helpers import OtlpReceiver

    tmp = registry_with_weak_champion
    receiver = OtlpReceiver()
    try:
        cmd = [sys.executable, "-m", "cli.main", "retrain", "--registry", str(tmp / "registry"),
               "--name", "colors", "--data", str(color_tree(tmp / "traced", 10, seed=7)),
               "--epochs", "1", "--min-gain", "-1", "--max-class-drop", "1.0"]
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
        run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == EXIT_PROMOTED, run.stderr[-3000:]
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        spans = {s.name: s for s in receiver.spans}
    finally:
        receiver.close()
    phases = ("train", "evaluate champion", "evaluate candidate", "decide", "promote")
    assert set(spans) >= {"retrain", *phases}, sorted(spans)
    root = spans["retrain"]
    assert all(spans[p].parent_span_id == root.span_id and spans[p].trace_id == root.trace_id
               for p in phases)
    starts = [spans[p].start_time_unix_nano for p in phases]
    assert starts == sorted(starts)
