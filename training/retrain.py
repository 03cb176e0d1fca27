"""``ocellus retrain``: fine-tune the served model on new data, promote it only if better.

1. Under the registry name's job lock, read the current version (the champion).
2. Fine-tune a candidate from the champion's weights with the champion's own
   training settings (its manifest's ``training.args``) on ``--data``: the
   task's training command (`models.tasks.Task.train`), called directly.
   When the champion is an int8 export, the candidate is quantized as the
   champion was: ``ocellus quantize`` on the job's data (its training split to
   calibrate, its val split to gate), under the champion's recorded gate
   (`quantize_candidate`). The int8 candidate is the one scored and published; a
   candidate that its gate refuses is not promoted, so a model served at int8 stays
   int8.
3. Evaluate champion and candidate with the same `Predictor` code on the same
   frozen evaluation set (``--eval-data``, else the val split of ``--data``):
   top-1 for classifiers, COCO mAP50-95 for detectors, and per-class recall.
4. Promote (publish, then atomically repoint ``current``) only when the
   candidate's score beats the champion's by ``--min-gain`` and no class falls
   below its floor: ``max(--min-class-recall, champion recall - --max-class-drop)``.
5. Write a JSON report of the decision.

The task's side (what its data look like, how to score) lives in the module
that the task table names (`models.tasks.Task.retrain`).

Exit codes: 0 promoted, 3 champion kept, 2 error (bad data, registry locked, ...).
A job killed at any point leaves the registry valid: the candidate is trained
in a hidden work folder (``REGISTRY/<name>/.tmp/``, which readers skip), copied
in with a rename, and ``current`` is replaced by a rename. What a killed job
left in ``.tmp`` is removed by the next job, under the same lock; that job can
first take the killed candidate's checkpoint
(``.tmp/retrain-*/candidate/checkpoints/last.pt``) with ``--resume`` and
continue its training. The job runs in one process (not under ``torchrun``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace

from models.backbones.catalog import uniform_trainable_stages
from models.errors import RegistryError
from models.export import Manifest, write_atomic
from models.registry import ModelRegistry
from models.tasks import get_task, resolve
from models.telemetry import install_provider

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ocellus.retrain")

EXIT_PROMOTED = 0
EXIT_KEPT = 3
EXIT_ERROR = 2
WORK_DIR = ".tmp"  # REGISTRY/<name>/.tmp: the jobs' work folders
# Training options that belong to a job, not to the champion's recipe: where the data,
# the starting weights and the export are, and how this job runs.
JOB_OPTIONS = frozenset({"data", "out", "weights", "init_from", "resume", "name", "version",
                         "device", "time_budget", "no_progress"})
# Options added after a champion was trained are missing from its recorded arguments:
# what its run did before they existed, so that retraining keeps its recipe.
BEFORE_RECORDED = {"crop_scale": 0.25, "ema_decay": 0.0, "mixup": 0.0, "cutmix": 0.0,
                   "layer_decay": 1.0}


def get_args_parser(prog: str = "ocellus retrain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--registry", type=Path, required=True, help="model registry folder")
    p.add_argument("--name", required=True, help="registry name of the model to retrain")
    p.add_argument("--data", type=Path, required=True,
                   help="new training data: an ImageFolder (classifier) or a DATA.yaml "
                        "(detector)")
    p.add_argument("--eval-data", type=Path, default=None,
                   help="frozen evaluation set of the same kind (a detector's: the val split "
                        "of a DATA.yaml); default: the val split of --data")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="score (top-1, or mAP50-95 for a detector) the candidate must add to "
                        "the champion's to be promoted")
    p.add_argument("--min-class-recall", type=float, default=0.0,
                   help="absolute floor of every class's recall")
    p.add_argument("--max-class-drop", type=float, default=0.1,
                   help="no class's recall may fall more than this below the champion's")
    p.add_argument("--epochs", type=int, default=None, help="default: the champion's")
    p.add_argument("--lr", type=float, default=None, help="default: the champion's")
    p.add_argument("--time-budget", type=float, default=None, help="training minutes")
    p.add_argument("--report", type=Path, default=None,
                   help="decision report; default REGISTRY/NAME/reports/<time>.json")
    p.add_argument("--dry-run", action="store_true", help="decide and report, never promote")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue the candidate of a killed job of this champion from its "
                        "checkpoint (REGISTRY/NAME/.tmp/retrain-*/candidate/checkpoints/last.pt)")
    p.add_argument("--device", default="cpu")
    return p


def decide(champion: dict[str, Any], candidate: dict[str, Any], *, min_gain: float,
           min_class_recall: float, max_class_drop: float, metric: str = "top1"
           ) -> dict[str, Any]:
    """Compare two scores of the same set; pure, so it is unit-tested.

    Args:
        champion, candidate: ``{metric: float, "per_class": {label: {"recall": float}}}``.
        metric: The key to compare (``top1`` or ``map50_95``).

    Returns:
        ``{"promote", "gain", "reasons", "class_floors"}``.
    """
    gain = candidate[metric] - champion[metric]
    reasons, floors = [], {}
    if gain < min_gain:
        reasons.append(f"{metric} gain {gain:+.4f} is below --min-gain {min_gain}")
    for label, stats in champion["per_class"].items():
        floor = max(min_class_recall, stats["recall"] - max_class_drop)
        floors[label] = floor
        got = candidate["per_class"][label]["recall"]
        if got < floor - 1e-9:
            reasons.append(f"class {label!r}: recall {got:.4f} is below its floor {floor:.4f}")
    return {"promote": not reasons, "gain": gain, "reasons": reasons, "class_floors": floors}


def candidate_args(parser: argparse.ArgumentParser, champion: Manifest, champion_path: Path,
                   job: argparse.Namespace, out: Path) -> argparse.Namespace:
    """The candidate's training options: the champion's recipe, then the job's overrides.

    From the training command's defaults, it takes every option of the champion's
    run (its manifest's ``training.args``) but the job's own (`JOB_OPTIONS`), then
    the architecture's arguments and input size, which the champion's weights fit,
    then the job's ``--epochs`` and ``--lr`` when given. The candidate starts from
    the champion's weights (``--init-from``).

    Args:
        parser: The task's ``get_args_parser()``.
        champion: The champion's manifest.
        champion_path: The champion's export.
        job: The job's arguments.
        out: Where the candidate's export goes.
    """
    args = parser.parse_args(["--data", str(job.data), "--out", str(out)])
    champion_args = champion.training.get("args")
    recipe = {**(BEFORE_RECORDED if champion_args else {}), **(champion_args or {}),
              **champion.architecture.get("args", {})}
    if "crop_size" in champion.preprocessing:
        recipe["img_size"] = champion.preprocessing["crop_size"]
    for key, value in recipe.items():
        if hasattr(args, key) and key not in JOB_OPTIONS:
            setattr(args, key, value)
    for key in ("epochs", "lr"):
        if getattr(job, key) is not None:
            setattr(args, key, getattr(job, key))
    if getattr(args, "trainable_stages", None) is not None:
        # An export made before the backbones' stages were uniform counts its own stages.
        recorded = args.trainable_stages
        args.trainable_stages = uniform_trainable_stages(
            args.backbone, recorded, champion.training.get("frozen_stages", ()))
        # A frozen backbone (the mode wins over the count) trains no stage either way.
        frozen = getattr(args, "mode", None) == "feature-extract" or \
            getattr(args, "freeze_backbone", False)
        if args.trainable_stages != recorded and not frozen:
            log.info("the champion's --trainable-stages %d counts %s's stages of before the "
                     "uniform stages: %d now", recorded, args.backbone, args.trainable_stages)
    args.weights, args.init_from, args.name = "none", champion_path, job.name
    args.device, args.time_budget, args.no_progress = job.device, job.time_budget, True
    return args


def keep_resume_checkpoint(path: Path, champion_path: Path) -> Path:
    """A copy of a killed candidate's checkpoint (and the ``best.pt`` beside it), safe from
    `work_folder`; the caller removes its folder.

    Raises:
        RegistryError: The checkpoint is not of a candidate of this champion
            (its run did not start from ``champion_path``).
    """
    import torch

    # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
    started_from = torch.load(path, map_location="cpu", weights_only=True)["args"].get(
        "init_from")
    if started_from is None or Path(started_from).resolve() != champion_path.resolve():
        raise RegistryError(f"{path}: --resume needs a candidate trained from the current "
                            f"version ({champion_path}), got one from {started_from}")
    folder = Path(tempfile.mkdtemp(prefix="ocellus-resume-"))
    for name, source in (("last.pt", path), ("best.pt", path.parent / "best.pt")):
        if source.is_file():
            shutil.copyfile(source, folder / name)
    return folder / "last.pt"


def quantize_candidate(candidate: Path, champion: Manifest, work: Path
                       ) -> tuple[Path | None, dict[str, Any]]:
    """The candidate's int8 export, made as the int8 champion's was.

    ``ocellus quantize`` with its defaults for the data (the candidate's training
    data, which is the job's ``--data``: its training split calibrates, its val split
    scores fp32 and int8), under the champion's recorded gate (``--max-drop`` and
    ``--max-class-drop``; the command's defaults where the champion was gated on
    agreement, with no labels).

    Returns:
        (``work/candidate-int8``, or None when the gate refused it; the quantize report).
    """
    from training.quantize import get_args_parser, quantize

    argv = ["--model", str(candidate), "--out", str(work / "candidate-int8")]
    gate = (champion.quantization or {}).get("gate", {})
    for key in ("max_drop", "max_class_drop"):
        if key in gate:
            argv += [f"--{key.replace('_', '-')}", str(gate[key])]
    report = quantize(get_args_parser().parse_args(argv))
    return (work / "candidate-int8" if report["accepted"] else None), report


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2) + "\n")


def work_folder(root: Path) -> Path:
    """A fresh work folder in `root`, after removing what killed jobs left there.

    Call it under the name's job lock: no other job can be using `root` then.
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():
        log.warning("removing %s, left by a job that was killed", stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"retrain-{os.getpid()}-", dir=root))


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    """The job, under the name's lock; returns the report (also written to disk)."""
    registry = ModelRegistry(args.registry)
    started = datetime.now(UTC)
    report_path = args.report or (args.registry / args.name / "reports" /
                                  f"{started.strftime('%Y%m%dT%H%M%S%fZ')}.json")
    with registry.lock(args.name):
        champion_version = registry.current(args.name)
        if champion_version is None:
            raise RegistryError(f"{args.registry / args.name} has no current version to "
                                f"retrain; publish and promote one first")
        champion_path = registry.path(args.name, champion_version)
        champion_manifest = registry.verify(args.name, champion_version)
        spec = get_task(champion_manifest.task)
        task = resolve(spec.retrain)
        frozen, source = task.eval_set(args, champion_manifest)
        # Taken before work_folder clears the killed job's folder it may lie in.
        resume = None if args.resume is None else \
            keep_resume_checkpoint(args.resume, champion_path)
        work = work_folder(registry.root / args.name / WORK_DIR)
        try:
            candidate_path = work / "candidate"
            # The task's own training command, called with the champion's recipe.
            train = resolve(spec.train)
            train_args = candidate_args(train.get_args_parser(), champion_manifest,
                                        champion_path, args, candidate_path)
            train_args.resume = resume
            with tracer.start_as_current_span("train"):
                train.main(train_args)
            quantization = None
            if champion_manifest.precision == "int8":
                with tracer.start_as_current_span("quantize candidate") as span:
                    int8, quantization = quantize_candidate(candidate_path, champion_manifest,
                                                            work)
                    span.set_attribute("ocellus.accepted", int8 is not None)
                candidate_path = int8 or candidate_path
            # The same Predictor class, the same frozen evaluation set, for both.
            scores = {}
            for role, path in (("champion", champion_path), ("candidate", candidate_path)):
                with tracer.start_as_current_span(f"evaluate {role}") as span:
                    scores[role] = task.score(path, frozen, args.device)
                    span.set_attribute(f"ocellus.{spec.metric}", scores[role][spec.metric])
            with tracer.start_as_current_span("decide") as span:
                decision = decide(scores["champion"], scores["candidate"],
                                  min_gain=args.min_gain,
                                  min_class_recall=args.min_class_recall,
                                  max_class_drop=args.max_class_drop, metric=spec.metric)
                if quantization is not None and not quantization["accepted"]:
                    decision["promote"] = False
                    decision["reasons"].insert(0, "the champion serves int8 and the "
                                               "candidate's int8 was refused: " +
                                               "; ".join(quantization["reasons"]))
                span.set_attribute("ocellus.promote", bool(decision["promote"]))
            metric = spec.metric
            report: dict[str, Any] = {
                "name": args.name, "task": champion_manifest.task, "metric": metric,
                "started_at": started.isoformat(timespec="seconds"),
                "champion": {"version": champion_version, **scores["champion"]},
                "candidate": scores["candidate"],
                "eval": {"num_images": scores["champion"]["num_images"], "source": source},
                "min_gain": args.min_gain, **decision, "promoted_version": None,
            }
            if quantization is not None:
                report["candidate_quantization"] = {
                    k: quantization[k] for k in ("accepted", "drop", "gate", "reasons")
                    if k in quantization}
            if decision["promote"] and not args.dry_run:
                if registry.current(args.name) != champion_version:
                    raise RegistryError(f"{args.name}: current changed during the job; "
                                        f"not promoting over it")
                with tracer.start_as_current_span("promote") as span:
                    version = registry.publish(args.name, candidate_path, extra={
                        "retrained_from": champion_version,
                        "retrain_report": str(report_path)})
                    reason = (f"retrain: {metric} {scores['candidate'][metric]:.4f} vs "
                              f"{scores['champion'][metric]:.4f} (v{champion_version})")
                    registry.promote(args.name, version, reason=reason)
                    span.set_attribute("ocellus.model.version", version)
                report["promoted_version"] = version
                log.info("promoted %s version %s (%s)", args.name, version, reason,
                         extra={"event": "retrain_promoted", "model": args.name,
                                "version": version, "champion": champion_version})
            else:
                log.info("kept %s version %s: %s", args.name, champion_version,
                         "; ".join(decision["reasons"]) or "dry run",
                         extra={"event": "retrain_kept", "model": args.name,
                                "version": champion_version, "reasons": decision["reasons"]})
            report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            _write_report(report_path, report)
            report["report_path"] = str(report_path)
            return report
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if resume is not None:
                shutil.rmtree(resume.parent, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    """Run the job; the exit code says what was decided (see the module docstring).

    With the ``OTEL_*`` variables set (models/telemetry.py), its phases are traced:
    one ``retrain`` span, with ``train``, ``quantize candidate`` (an int8 champion),
    ``evaluate champion``, ``evaluate candidate``, ``decide`` and ``promote`` under it.
    """
    provider = install_provider("ocellus-retrain")
    try:
        with tracer.start_as_current_span("retrain", attributes={"ocellus.model": args.name}):
            report = retrain(args)
    finally:
        if provider is not None:
            provider.force_flush()  # sends the spans still buffered
    return EXIT_PROMOTED if report["promoted_version"] else EXIT_KEPT
