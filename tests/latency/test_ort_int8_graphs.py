"""onnxruntime-int8 times what ONNX Runtime runs inside a quantized network (halp.latency.int8 docstring).

Asserted on the graphs ONNX Runtime compiles (node types, dtypes, shapes), never on a wall-clock time:
every conv of an exported BatchNorm network fused to an INT8 kernel, single layers without the layout
transposes a network pays only at its ends, and ops behind their producing convs.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from halp.graph.types import LayerShape
from halp.latency.int8 import OnnxRuntimeInt8Backend, export_float_onnx, op_after_producers, runtime_layout
from halp.latency.onnx_layers import single_layer_model
from halp.latency.qdq import input_names, quantize_qdq, quantized_layer_model
from halp.latency.timing import TimingSettings

pytest.importorskip("onnxruntime")

QUICK = TimingSettings(warmup=1, warmup_ms=0, repeats=3, min_time_ms=0, max_repeats=3)


def _bn_net() -> nn.Module:
    """Conv-BN-ReLU blocks of equal widths: freshly initialised, every folded bias is the same zero vector,
    which torch's exporter shares between the convs (as in MobileNet-V2 and ResNet-18 at init)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin in (3, 16, 16, 16):
        layers += [nn.Conv2d(cin, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _optimized_ops(be: OnnxRuntimeInt8Backend, path: Path, tmp: str) -> Counter:
    return Counter(n.op_type for n in be.optimized(path.read_bytes(), tmp).graph.node)


def test_quantized_network_runs_every_conv_int8():
    """Preprocessed before quantizing, all 4 convs run QLinearConv; quantized straight from the export,
    ONNX Runtime leaves all but the first in float (the shared bias: qdq.quantize_qdq's docstring)."""
    be = OnnxRuntimeInt8Backend(threads=1)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        ops = _optimized_ops(be, be.quantized_onnx(_bn_net(), (x,), Path(tmp) / "net.int8.onnx"), tmp)
        assert ops["QLinearConv"] == 4 and ops["Conv"] == 0
        src, feed = export_float_onnx(_bn_net(), (x,), Path(tmp) / "net.onnx")
        raw = quantize_qdq(src, Path(tmp) / "raw.int8.onnx", [dict(zip(input_names(src), feed.values()))])
        raw_ops = _optimized_ops(be, raw, tmp)
        assert raw_ops["QLinearConv"] == 1 and raw_ops["Conv"] == 3


def test_single_layer_in_runtime_layout():
    """The timed layer is one channels-last QLinearConv fed NHWC uint8: no transpose left."""
    be = OnnxRuntimeInt8Backend(threads=1)
    shape = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), in_hw=(9, 7))
    data, name, x = single_layer_model(shape, 8, 12)
    with tempfile.TemporaryDirectory() as tmp:
        qdata, feed = quantized_layer_model(data, {name: x}, tmp)
        before = [n.op_type for n in be.optimized(qdata, tmp).graph.node]
        model, nhwc = runtime_layout(be.optimized(qdata, tmp), feed)
    assert before == ["Transpose", "QLinearConv", "Transpose"]
    assert [n.op_type for n in model.graph.node] == ["QLinearConv"]
    (arr,) = nhwc.values()
    assert arr.dtype == np.uint8 and arr.shape == (1, 9, 7, 8)
    np.testing.assert_array_equal(arr, next(iter(feed.values())).transpose(0, 2, 3, 1))
    out = be._session(model.SerializeToString()).run(None, nhwc)[0]
    assert out.dtype == np.uint8 and out.shape == (1, 9, 7, 12)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 9, 7, 12]


@pytest.mark.parametrize("kind, nodes", [("batchnorm", []), ("relu6", []), ("relu", []), ("add", ["QLinearAdd"]),
                                         ("maxpool", ["NhwcMaxPool"]), ("adaptive_avgpool", ["QLinearGlobalAveragePool"])])
def test_ops_behind_their_producer(kind, nodes):
    """What remains of ``1x1 conv → op`` without the conv is the op as the network runs it."""
    import torch as t

    from halp.latency.int8 import _AfterConvs
    from halp.latency.ops import op_module

    be = OnnxRuntimeInt8Backend(threads=1, settings=QUICK)
    op, inputs = op_module(kind, 1, 8, (1, 1) if kind == "adaptive_avgpool" else (4, 4), t.float32, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path, feed = export_float_onnx(_AfterConvs(op, [int(i.shape[1]) for i in inputs]).eval(), inputs,
                                       Path(tmp) / "op.onnx")
        qdata, qfeed = quantized_layer_model(path.read_bytes(), feed, tmp)
        model, qfeed = op_after_producers(*runtime_layout(be.optimized(qdata, tmp), qfeed))
    assert [n.op_type for n in model.graph.node] == nodes
    assert all(a.dtype == np.uint8 for a in qfeed.values()) and len(qfeed) == len(inputs)
    assert not model.graph.initializer or nodes  # the removed convs' weights went with them
    with be:
        ms = be.time_op(kind, 1, 8, (1, 1) if kind == "adaptive_avgpool" else (4, 4)).median_ms
    # folded ops cost exactly nothing; the others their run less one session call (a tiny op may reach 0)
    assert ms == 0.0 if not nodes else 0 <= ms < 1e3


def test_session_call_taken_off_every_sample():
    """Each layer and op sample loses the fixed cost of one session call, timed once per backend."""
    from halp.latency.int8 import call_model, less
    from halp.latency.timing import LatencyStats

    got = less(LatencyStats.from_samples([0.5, 0.2, 0.05]), 0.1)
    np.testing.assert_allclose(got.samples, [0.4, 0.1, 0.0])
    assert got.median_ms == pytest.approx(0.1)
    data, feed = call_model()
    be = OnnxRuntimeInt8Backend(threads=1, settings=QUICK)
    out = be._session(data).run(None, feed)[0]
    assert out.dtype == np.uint8 and out.shape == (1, 8)
    with be:
        first = be.call_overhead_ms()
        assert 0 < first < 1e3 and be.call_overhead_ms() == first  # measured once, then reused
