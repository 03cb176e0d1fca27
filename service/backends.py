"""Inference backends: how a predictor's forward pass runs, and how ``auto`` picks one.

A backend is a callable ``(B, 3, S, S) float → raw outputs`` used in place of
`Predictor.forward`; preprocessing and postprocessing stay the predictor's, so
every backend serves exactly the same API.

- ``eager``: fp32, channels_last (`Predictor.forward`). The reference.
- ``compiled``: a traced, frozen TorchScript graph (conv-bn folded, constants
  inlined). On this project's 2-core Zen 5 box with EfficientNet-Lite0 it gave
  ~127 img/s at batch 1 after a 0.8 s build, while ``torch.compile`` took 25 s to
  compile, reached ~98 img/s and recompiled for every new batch size; so the
  frozen graph is the ``compiled`` backend. It is now built in a child process
  (`build_compiled`), in 4 to 6 s.
- ``bf16``: bfloat16 autocast around the eager model, offered only where the CPU
  has native bf16 (AVX512-BF16 or AMX). Fast for ResNets; for depthwise-heavy
  nets (EfficientNet-Lite0) oneDNN falls back to slow kernels (~5 img/s), and
  ``auto`` measures that and passes over it.
- ``int8``: the OpenVINO int8 model of an int8 export (models/int8.py), CPU only.
- ``auto``: an int8 export is served by ``int8``: ``ocellus quantize`` gated it
  when it made it, on its accuracy drop against fp32 on labelled data (the measure
  that counts: top-1 agreement on a few ambiguous photos is not), or for a model
  with no labelled data here (the defaults' variants), on its agreement with fp32
  on held-out real photos. Its agreement with eager on real photos is still
  measured and reported. For an
  fp32 export, measure each candidate's speed on real-shaped input, then take the
  fastest one whose results agree with ``eager`` on real photos (top-1 for
  classification, boxes at IoU 0.9 for detection) at least `MIN_AGREEMENT` of the
  time. Otherwise fall back, and say why in the `BackendReport`.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.agreement import agreement
from models.predictor import BatchMajor, Predictor
from service.compile_cache import keep, load_graph
from service.compile_cache import key as compile_cache_key
from service.compile_cache import load as compile_cache_load

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compiled", "bf16", "int8")
MIN_AGREEMENT = 0.995
COMPILE_TIMEOUT_S = 120  # a build takes 4 to 6 s here; the rest is room for a busy box

Forward = Callable[[torch.Tensor], Any]
Builder = Callable[[Predictor, torch.Tensor], Forward]


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if "AMX" in capability:
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _to_float32(outputs: Any) -> Any:
    """Cast floating tensors in (nested) outputs back to fp32 for postprocessing."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, tuple | list):
        return type(outputs)(_to_float32(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _to_float32(v) for k, v in outputs.items()}
    return outputs


def build_eager(predictor: Predictor, example: torch.Tensor) -> Forward:
    return predictor.eager_forward


def build_compiled(predictor: Predictor, example: torch.Tensor,
                   compile_cache: Path | None = None) -> Forward:
    """Trace at `example`'s shape and freeze; batch size stays free (checked by `auto`).

    The traced module includes `Predictor.batch_major`, so the graph's outputs
    split by request exactly as eager's do.

    The graph is built in a child process and loaded here. TorchScript keeps what it
    traces and freezes in its process-wide compilation unit for good, even when the
    trace is given a compilation unit of its own: about 30 MB per trace and freeze
    of EfficientNet-Lite0 (the frozen weights and 225 traced methods), about 47 MB
    per load through the model store, so a service that hot-reloads fp32 exports
    under ``compiled`` or ``auto`` grew with every reload (12 loads: RSS 869 ->
    1,433 MB). A loaded graph lives in a compilation unit of its own and is freed
    with it (12 loads through the store: flat from the third). The child costs a
    Python start-up and a torch import per build: about 4 to 6 s, and 0.5 GB of
    memory of its own at its peak (0.9 GB RSS with the shared libraries).
    It traces on the model's device; on CUDA that is untested here (no GPU).

    With a `compile_cache` directory, the graph is kept there and a later build of
    the same model loads it instead (service/compile_cache.py).
    """
    kept = None
    if compile_cache is not None:
        try:
            kept = compile_cache / f"{compile_cache_key(predictor, example)}.pt"
        except OSError as exc:  # a source file unreadable: built, not kept
            log.info("compile cache not used: %s", exc)
    if kept is not None and (loaded := compile_cache_load(kept, predictor)) is not None:
        return _graph_forward(loaded, predictor)
    with tempfile.TemporaryDirectory(prefix="ocellus-compile-") as tmp:
        module, graph = Path(tmp, "module.pt"), Path(tmp, "graph.pt")
        torch.save(BatchMajor(predictor).eval(), module)
        shape = ",".join(str(n) for n in example.shape)
        # The child imports what this process can (the model's classes, to unpickle
        # it), and no more: -P keeps the working directory off its path.
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)  # '': the cwd
        env = {**os.environ, "PYTHONPATH": path}
        try:
            child = subprocess.run(
                [sys.executable, "-P", "-m", "service.backends", str(module), shape, str(graph)],
                capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False, env=env)
        except subprocess.TimeoutExpired:  # run() has killed and reaped the child
            raise RuntimeError(f"building the TorchScript graph took over {COMPILE_TIMEOUT_S:g} "
                               f"s; the build was stopped") from None
        if child.returncode != 0:
            how = (f"killed by signal {-child.returncode}" if child.returncode < 0
                   else f"exit status {child.returncode}")
            raise RuntimeError(f"building the TorchScript graph failed ({how}): "
                               f"{child.stderr.strip()[-2000:]}")
        loaded = load_graph(graph, predictor)
        if kept is not None:
            keep(graph, kept)
    return _graph_forward(loaded, predictor)


def _graph_forward(loaded: torch.jit.ScriptModule, predictor: Predictor) -> Forward:
    @torch.inference_mode()
    def forward(batch: torch.Tensor) -> Any:
        return loaded(batch.to(predictor.device).contiguous(memory_format=torch.channels_last))

    return forward


def _trace_and_freeze(module: Path, shape: str, out: Path) -> None:
    """The child's side of `build_compiled`: the pickled module traced, frozen, saved.

    On one intra-op thread: tracing gains nothing from more, and the service's
    forwards run beside it during a hot reload.
    """
    torch.set_num_threads(1)
    model = torch.load(module, weights_only=False)  # written by the parent just now
    example = torch.zeros(*(int(n) for n in shape.split(",")), device=next(
        model.parameters()).device).contiguous(memory_format=torch.channels_last)
    # TorchScript is deprecated in torch 2.14 (in favour of torch.compile, which is slower
    # here, see above) and warns about shape-dependent padding that is constant at S.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        graph = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False,
                                                 strict=False))
    torch.jit.save(graph, out)


def build_bf16(predictor: Predictor, example: torch.Tensor) -> Forward:
    if predictor.device.type == "cpu" and not cpu_has_bf16():
        raise RuntimeError("this CPU has no native bfloat16 (AVX512-BF16 or AMX)")

    @torch.inference_mode()
    def forward(batch: torch.Tensor) -> Any:
        with torch.autocast(predictor.device.type, dtype=torch.bfloat16):
            return _to_float32(predictor.eager_forward(batch))

    return forward


def build_int8(predictor: Predictor, example: torch.Tensor) -> Forward:
    from models.int8 import load_int8_forward

    if predictor.source is None:
        raise RuntimeError("int8 needs the predictor's export folder (load_predictor)")
    return load_int8_forward(predictor, predictor.source)


BUILDERS: dict[str, Builder] = {"eager": build_eager, "compiled": build_compiled,
                                "bf16": build_bf16, "int8": build_int8}


def builders_with_compile_cache(compile_cache: Path | None) -> dict[str, Builder]:
    """`BUILDERS`, `compiled` keeping its graphs in `compile_cache` (None: as is)."""
    if compile_cache is None:
        return BUILDERS
    return {**BUILDERS, "compiled": functools.partial(build_compiled,
                                                      compile_cache=compile_cache)}


@dataclass
class BackendReport:
    """Which backend serves a model, and the measurements behind the choice."""

    name: str
    requested: str
    reason: str
    throughput: dict[str, float] = field(default_factory=dict)  # img/s at the probe batch
    agreement: dict[str, float] = field(default_factory=dict)  # with eager, on real images
    sample_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds_per_call(fn: Forward, batch: torch.Tensor, calls: int) -> float:
    """The fastest of `calls` timed calls: the minimum is robust to other load on the box."""
    fn(batch)  # warm-up (TorchScript profiles its first runs)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - start)
    return best


def fastest_seconds(calls: dict[Any, Callable[[], Any]], rounds: int = 3) -> dict[Any, float]:
    """Each call's fastest of `rounds` timed runs, the calls taking turns round by round.

    Taking turns makes a burst of other load on the machine slow every candidate
    alike instead of deciding which one looks fastest.
    """
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def _run_batched(fn: Forward, inputs: torch.Tensor, batch_size: int) -> Any:
    outs = [fn(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return _cat_outputs(outs)


def _cat_outputs(outs: list[Any]) -> Any:
    """Concatenate per-chunk outputs by row; tuples/lists may nest (NanoDet: per level)."""
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    if isinstance(outs[0], tuple | list):
        return type(outs[0])(_cat_outputs(list(parts)) for parts in zip(*outs, strict=True))
    raise TypeError(f"cannot concatenate outputs of type {type(outs[0]).__name__}")


def select_backend(predictor: Predictor, requested: str, samples: list[torch.Tensor], *,
                   batch_size: int = 8, min_agreement: float = MIN_AGREEMENT,
                   builders: dict[str, Builder] | None = None, budget_s: float = 2.0,
                   ) -> tuple[Forward, BackendReport]:
    """Build the requested backend, or for ``auto`` the fastest one that agrees with eager.

    Args:
        predictor: The loaded predictor (its model is the eager reference).
        requested: One of `BACKENDS`, or a key of `builders`.
        samples: Real photos, uint8 (3, H, W); they are preprocessed by `predictor`.
        batch_size: The batch size speed is measured at (the service's max batch).
        min_agreement: The least agreement with eager a fast path needs.
        builders: Candidate backends by name (default `BUILDERS`); tests pass a
            deliberately broken one.
        budget_s: About how long the eager reference pass on `samples` may take.

    Raises:
        ValueError: An unknown backend name.
    """
    builders = dict(builders or BUILDERS)
    if requested != "auto" and requested not in builders:
        raise ValueError(f"backend must be one of {sorted({'auto', *builders})}, "
                         f"got {requested!r}")
    size = predictor.input_size
    example = torch.zeros(2, 3, size, size)
    if requested != "auto":
        fn = builders[requested](predictor, example)
        return fn, BackendReport(requested, requested, "set in the settings")
    if (predictor.manifest.precision == "int8" and "int8" in builders
            and predictor.device.type == "cpu"):  # elsewhere its fp32 model is served
        return _int8_export(predictor, builders, samples, example)
    builders.pop("int8", None)  # not an int8 export, or not on the CPU

    built: dict[str, Forward] = {}
    probe = torch.randn(batch_size, 3, size, size)
    eager_one = _seconds_per_call(builders["eager"](predictor, example), probe[:1], 3)
    for name, build in builders.items():
        try:
            fn = build(predictor, example)
            # A path many times slower than eager at batch 1 is not timed at full batch.
            if name != "eager" and _seconds_per_call(fn, probe[:1], 1) > 4 * eager_one:
                log.info("backend %s: over 4x slower than eager at batch 1, skipped", name)
                continue
            fn(probe)  # warm-up at full batch (TorchScript profiles its first runs)
            built[name] = fn
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is not chosen
            log.info("backend %s unavailable: %s", name, exc)
    seconds = fastest_seconds({name: (lambda fn=fn: fn(probe)) for name, fn in built.items()})
    throughput = {name: batch_size / t for name, t in seconds.items()}
    if not samples:
        return built["eager"], BackendReport("eager", "auto", "no real images to check "
                                             "agreement against", throughput)
    # Bound the check: about `budget_s` of eager work (at least 8 images). With fewer
    # than 200 images, passing 99.5% means no disagreement at all.
    samples = samples[:max(8, int(budget_s * throughput.get("eager", 100.0)))]
    inputs, metas = zip(*(predictor.preprocess(im) for im in samples), strict=True)
    # An odd chunk size exercises batch sizes other than the traced one.
    chunk = max(1, batch_size - 1)
    stacked = torch.stack(inputs)  # (N, 3, S, S)
    reference = _run_batched(built["eager"], stacked, chunk)
    agreements: dict[str, float] = {"eager": 1.0}
    reasons = []
    for name in sorted(throughput, key=throughput.__getitem__, reverse=True):
        if name == "eager":
            break
        try:
            score = agreement(predictor, reference, _run_batched(built[name], stacked, chunk),
                              list(metas))
        except Exception as exc:  # noqa: BLE001 - e.g. a graph that fixed the batch size
            reasons.append(f"{name} failed on real images ({exc})")
            continue
        agreements[name] = score
        if score >= min_agreement:
            report = BackendReport(name, "auto", f"fastest with agreement {score:.4f} >= "
                                   f"{min_agreement}" + (f"; {'; '.join(reasons)}"
                                                         if reasons else ""),
                                   throughput, agreements, len(samples))
            log.info("backend %s chosen: %s", name, report.reason)
            return built[name], report
        reasons.append(f"{name} agreement {score:.4f} < {min_agreement}")
        log.warning("backend %s rejected: agreement with eager fp32 %.4f < %s on %d real "
                    "images", name, score, min_agreement, len(samples))
    reason = "; ".join(reasons) or "eager is the fastest"
    return built["eager"], BackendReport("eager", "auto", f"fell back to eager: {reason}",
                                         throughput, agreements, len(samples))


def _int8_export(predictor: Predictor, builders: dict[str, Builder],
                 samples: list[torch.Tensor], example: torch.Tensor
                 ) -> tuple[Forward, BackendReport]:
    """``auto`` for an int8 export: the int8 model, gated at quantize time; its agreement
    with eager on real photos is reported, not gated (see the module's docstring)."""
    fn = builders["int8"](predictor, example)
    quantization = predictor.manifest.quantization
    if "drop" in quantization:
        measured = "accuracy drop against fp32 on labelled data", quantization["drop"]
    else:
        measured = "agreement with fp32 on held-out photos", quantization.get("agreement", {})
    reason = f"int8 export, gated when quantized on its {measured[0]}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in measured[1].items() if isinstance(v, float))
    agreements: dict[str, float] = {"eager": 1.0}
    if samples:
        inputs, metas = zip(*(predictor.preprocess(im) for im in samples[:32]), strict=True)
        stacked = torch.stack(inputs)
        agreements["int8"] = agreement(predictor, predictor.eager_forward(stacked),
                                       fn(stacked), list(metas))
    return fn, BackendReport("int8", "auto", reason, {}, agreements, min(len(samples), 32))


if __name__ == "__main__":  # `build_compiled`'s child process
    _trace_and_freeze(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
