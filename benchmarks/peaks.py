"""How much compute a model needs and how much this box has: GFLOP per image, and
peak GOP/s per precision (for serve_load.py's "achieved ÷ peak")."""

from __future__ import annotations

import time

import torch


def gflop_per_image(predictor) -> float:
    """GFLOP of one forward pass (a multiply-add is 2), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    size = predictor.input_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        predictor.model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def hardware_peaks(seconds: float = 1.0) -> dict[str, float]:
    """GOP/s this box reaches on the largest, simplest work of each precision."""
    import openvino as ov

    from models.int8 import openvino_config
    from training.quantize import quantize_ov

    def rate(fn, ops: float) -> float:
        fn()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            n += 1
        return ops * n / (time.perf_counter() - start) / 1e9

    m = 2048
    a, b = torch.randn(m, m), torch.randn(m, m)
    ai, bi = (torch.randint(-128, 127, (m, m), dtype=torch.int8) for _ in range(2))
    ab, bb = a.bfloat16(), b.bfloat16()
    peaks = {"fp32 matmul (torch)": rate(lambda: a @ b, 2 * m ** 3),
             "bf16 matmul (torch)": rate(lambda: ab @ bb, 2 * m ** 3),
             "int8 matmul (torch._int_mm)": rate(lambda: torch._int_mm(ai, bi), 2 * m ** 3)}
    # 3x3 convolutions, 256 → 256 channels on 28x28, batch 8: the kind of work a CNN does.
    convs = torch.nn.Sequential(*[torch.nn.Conv2d(256, 256, 3, padding=1)
                                  for _ in range(4)]).eval()
    x = torch.randn(8, 256, 28, 28)
    ops = 4 * 2 * 8 * 256 * 256 * 9 * 28 * 28
    with torch.no_grad():
        model = ov.convert_model(convs, example_input=x[:1], input=[(-1, 256, 28, 28)])
    core = ov.Core()
    for name, m_ in (("fp32", model),
                     ("int8", quantize_ov(model, [x[i] for i in range(8)]))):
        compiled = core.compile_model(m_, "CPU", openvino_config())
        peaks[f"{name} 3x3 conv (OpenVINO)"] = rate(lambda c=compiled: c(x.numpy()), ops)
    return peaks
