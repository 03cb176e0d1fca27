"""Read a TF.js graph model (``model.json`` + ``*.bin``) without TensorFlow.

A TF.js graph model is a TensorFlow ``GraphDef`` written as JSON
(``modelTopology.node``) whose constants live in binary shards described by
``weightsManifest``. This module decodes the shards into numpy arrays and pulls
out the convolution layers in a form an ``nn.Conv2d`` can take, together with
what the graph does around each one (padding, bias, activation), so an importer
can check that the graph really has the architecture it maps the weights onto.

It runs no graph: importers map weights onto ordinary PyTorch modules, which
then need neither these files nor this module at serving time.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import WeightsUnavailableError

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTIZED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
# Ops that only relabel or re-lay-out a tensor: walked through when tracing.
_PASS_THROUGH = {"Identity", "Transpose"}


@dataclass
class TfjsGraph:
    """A parsed graph model.

    Attributes:
        nodes: Graph nodes by name, each the GraphDef JSON dict
            (``op``, ``input``, ``attr``).
        weights: Constant tensors by node name, decoded to numpy.
        meta: The top-level JSON fields other than topology and manifest
            (``format``, ``signature``, ``generatedBy``, ...).
    """

    nodes: dict[str, dict[str, Any]]
    weights: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def consumers(self) -> dict[str, list[str]]:
        """Node name → names of the nodes that read its output."""
        out: dict[str, list[str]] = defaultdict(list)
        for name, node in self.nodes.items():
            for src in node.get("input", []):
                out[_node_name(src)].append(name)
        return out


@dataclass
class ConvLayer:
    """One ``Conv2D`` of the graph, in PyTorch terms.

    Attributes:
        name: Graph node name.
        weight: ``(C_out, C_in, kH, kW)`` float32 filter.
        bias: ``(C_out,)`` bias added right after the convolution, or None.
        stride: ``(sH, sW)``.
        padding: ``(top, bottom, left, right)`` zeros added before it by a ``Pad`` node.
        leaky_relu: Negative slope of the ``LeakyRelu`` that follows, or None.
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    leaky_relu: float | None


def _node_name(ref: str) -> str:
    """``"^a"``, ``"a:1"`` → ``"a"`` (GraphDef input references)."""
    return ref.lstrip("^").split(":")[0]


def read_graph_model(json_path: str | Path, bin_paths: Sequence[str | Path]) -> TfjsGraph:
    """Parse a TF.js graph model.

    Args:
        json_path: The ``model.json``.
        bin_paths: Its weight shards, in the order the manifest lists them.

    Returns:
        The parsed graph with every constant decoded (quantized ones dequantized
        to float32).

    Raises:
        WeightsUnavailableError: A file is missing, is not a graph model, or the
            shards do not hold exactly what the manifest describes.
    """
    json_path = Path(json_path)
    for path in (json_path, *map(Path, bin_paths)):
        if not path.is_file():
            raise WeightsUnavailableError(f"TF.js model file {path} does not exist")
    model = json.loads(json_path.read_text())
    if model.get("format") != "graph-model" or "modelTopology" not in model:
        raise WeightsUnavailableError(
            f"expected a TF.js graph model in {json_path}, got format {model.get('format')!r}"
        )
    buf = b"".join(Path(p).read_bytes() for p in bin_paths)
    specs = [w for group in model["weightsManifest"] for w in group["weights"]]
    weights: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        array, offset = _decode(spec, buf, offset)
        weights[spec["name"]] = array
    if offset != len(buf):
        raise WeightsUnavailableError(
            f"the manifest of {json_path} describes {offset} bytes of weights, "
            f"the shards hold {len(buf)}"
        )
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    meta = {k: v for k, v in model.items() if k not in ("modelTopology", "weightsManifest")}
    return TfjsGraph(nodes=nodes, weights=weights, meta=meta)


def _decode(spec: dict[str, Any], buf: bytes, offset: int) -> tuple[np.ndarray, int]:
    """Decode one manifest entry starting at ``offset``; return it and the next offset."""
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    stored = _QUANTIZED.get(quant["dtype"]) if quant else _DTYPES.get(spec["dtype"])
    if stored is None:
        raise WeightsUnavailableError(
            f"weight {spec['name']!r} has an unsupported dtype {spec['dtype']!r} "
            f"(quantization {quant!r})"
        )
    nbytes = count * np.dtype(stored).itemsize
    if offset + nbytes > len(buf):
        raise WeightsUnavailableError(
            f"weight {spec['name']!r} needs bytes {offset}..{offset + nbytes}, "
            f"the shards hold {len(buf)}"
        )
    array = np.frombuffer(buf, dtype=stored, count=count, offset=offset)
    if quant and quant["dtype"] != "float16":
        # Affine uint8/uint16 quantization: value = q * scale + min.
        array = array.astype(np.float32) * quant["scale"] + quant["min"]
    array = array.astype(_DTYPES.get(spec["dtype"], np.float32))
    return array.reshape(shape), offset + nbytes


def _natural_key(name: str) -> tuple[str, int]:
    """``"conv_12"`` sorts after ``"conv_2"``; an unnumbered name comes first."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert match is not None  # the pattern matches every string
    return match.group(1), int(match.group(2) or -1)


def conv_layers(graph: TfjsGraph) -> list[ConvLayer]:
    """Every ``Conv2D`` of the graph with its padding, bias and activation.

    The list is in natural name order (``convolution``, ``convolution_1``, ...).
    Converters that go through ONNX (onnx-tf) number nodes in ONNX order, which
    is the execution order of the PyTorch model that was exported, so this is
    also the order in which the original module called its convolutions.
    """
    consumers = graph.consumers()
    convs = sorted(
        (n for n in graph.nodes.values() if n["op"] == "Conv2D"),
        key=lambda n: _natural_key(n["name"]),
    )
    return [_conv_layer(graph, consumers, node) for node in convs]


def _attr_ints(node: dict[str, Any], key: str) -> list[int]:
    return [int(i) for i in node["attr"][key]["list"]["i"]]


def _conv_layer(graph: TfjsGraph, consumers: dict[str, list[str]], node: dict) -> ConvLayer:
    name = node["name"]
    data_ref, filter_ref = node["input"][:2]
    hwio = graph.weights.get(_node_name(filter_ref))
    if hwio is None:
        raise WeightsUnavailableError(f"the filter of {name} is not a constant of the graph")
    fmt = node["attr"].get("data_format", {}).get("s", "TkhXQw==")  # base64 of "NHWC"
    if fmt != "TkhXQw==":
        raise WeightsUnavailableError(f"{name}: only NHWC convolutions are supported")
    if node["attr"]["padding"]["s"] != "VkFMSUQ=":  # base64 of "VALID"
        raise WeightsUnavailableError(f"{name}: expected padding VALID after an explicit Pad")
    if any(d != 1 for d in _attr_ints(node, "dilations")):
        raise WeightsUnavailableError(f"{name}: dilated convolutions are not supported")
    strides = _attr_ints(node, "strides")  # NHWC: [1, sH, sW, 1]
    return ConvLayer(
        name=name,
        # TF filters are (kH, kW, C_in, C_out); torch wants (C_out, C_in, kH, kW).
        weight=torch.from_numpy(np.ascontiguousarray(hwio.transpose(3, 2, 0, 1))),
        bias=_bias_after(graph, consumers, name),
        stride=(strides[1], strides[2]),
        padding=_padding_before(graph, _node_name(data_ref)),
        leaky_relu=_leaky_relu_after(graph, consumers, name),
    )


def _padding_before(graph: TfjsGraph, name: str) -> tuple[int, int, int, int]:
    """Zero padding a ``Pad`` adds to the H and W axes of the NHWC tensor ``name``."""
    perm = [0, 1, 2, 3]  # axis of the NHWC conv input → axis of the tensor being traced
    node = graph.nodes[name]
    while node["op"] in _PASS_THROUGH:
        if node["op"] == "Transpose":
            p = graph.weights[_node_name(node["input"][1])].tolist()
            perm = [p[a] for a in perm]
        node = graph.nodes[_node_name(node["input"][0])]
    if node["op"] not in ("Pad", "PadV2"):
        return (0, 0, 0, 0)
    if node["op"] == "PadV2":
        value = graph.weights[_node_name(node["input"][2])]
        if float(value) != 0.0:
            raise WeightsUnavailableError(f"{node['name']} pads with {value}, expected zeros")
    pads = graph.weights[_node_name(node["input"][1])]  # (rank, 2)
    (top, bottom), (left, right) = pads[perm[1]].tolist(), pads[perm[2]].tolist()
    return (top, bottom, left, right)


def _single_consumer(consumers: dict[str, list[str]], name: str) -> str | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 else None


def _bias_after(graph: TfjsGraph, consumers: dict[str, list[str]], name: str):
    user = _single_consumer(consumers, name)
    if user is None or graph.nodes[user]["op"] not in ("Add", "AddV2", "BiasAdd"):
        return None
    for ref in graph.nodes[user]["input"]:
        value = graph.weights.get(_node_name(ref))
        if value is not None and value.ndim == 1:
            return torch.from_numpy(value.astype(np.float32))
    return None


def _leaky_relu_after(graph: TfjsGraph, consumers: dict[str, list[str]], name: str):
    """Slope of the LeakyRelu reached from ``name`` through bias adds and relayouts."""
    user = _single_consumer(consumers, name)
    while user is not None and graph.nodes[user]["op"] in (*_PASS_THROUGH, "Add", "AddV2",
                                                           "BiasAdd"):
        node = graph.nodes[user]
        if node["op"] in ("Add", "AddV2") and not any(
            _node_name(r) in graph.weights for r in node["input"]
        ):
            return None  # a residual/FPN sum, not a bias: the conv's own output ends here
        user = _single_consumer(consumers, user)
    if user is not None and graph.nodes[user]["op"] == "LeakyRelu":
        return float(graph.nodes[user]["attr"]["alpha"]["f"])
    return None
