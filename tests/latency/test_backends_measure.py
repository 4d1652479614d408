"""Backends (torch-cpu, onnxruntime, torch-cuda when lent) and end-to-end measurement.

No wall-clock thresholds: only that numbers are positive, shaped right, and that settings are restored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import halp
from halp.graph.types import LayerShape
from halp.latency.backends import get_backend
from halp.latency.onnx_layers import conv_out_hw, single_layer_model
from halp.latency.timing import TimingSettings

QUICK = TimingSettings(warmup=1, warmup_ms=0, repeats=3, min_time_ms=0, max_repeats=3)
CONV = LayerShape("conv2d", (3, 3), (2, 2), (1, 1), (1, 1), 1, (9, 9), bias=True)
DW = LayerShape("conv2d", (3, 3), (1, 1), (2, 2), (2, 2), 0, (8, 8))
GROUPED = LayerShape("conv2d", (1, 1), (1, 1), (0, 0), (1, 1), 4, (5, 5))
LIN = LayerShape("linear", batch=2, bias=True)


@pytest.mark.parametrize("shape,cin,cout,rep", [(CONV, 6, 10, 1), (DW, 12, 12, 1), (GROUPED, 8, 12, 1), (LIN, 6, 7, 4)])
def test_onnx_single_layer_matches_torch(shape, cin, cout, rep):
    """The ONNX graph built by hand computes exactly the torch op the torch backend times."""
    import onnxruntime as ort
    from onnx import load_from_string, numpy_helper

    data, name, x = single_layer_model(shape, cin, cout, rep)
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in load_from_string(data).graph.initializer}
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    xt = torch.from_numpy(x)
    if shape.kind == "linear":
        want = F.linear(xt, inits["W"], inits["B"])
    else:
        groups = cout if shape.depthwise else shape.groups
        want = F.conv2d(xt, inits["W"], inits.get("B"), shape.stride, shape.padding, shape.dilation, groups)
        assert got.shape[2:] == conv_out_hw(shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch-cpu", "onnxruntime"])
def test_backends_time_layers_ops_and_restore_threads(backend):
    before = torch.get_num_threads()
    be = get_backend(backend, threads=1, settings=QUICK)
    with be:
        assert torch.get_num_threads() == 1
        for shape, cin, cout, rep in [(CONV, 6, 10, 1), (DW, 12, 12, 1), (GROUPED, 8, 12, 1), (LIN, 6, 7, 4)]:
            st = be.time_layer(shape, cin, cout, rep)
            assert st.median_ms > 0 and len(st.samples) == 3
        assert be.time_op("batchnorm", 1, 8, (4, 4)).median_ms > 0
    assert torch.get_num_threads() == before
    info = be.info()
    assert info["backend"] == backend and info["device"] and info["torch"] == torch.__version__


def test_backend_argument_errors():
    with pytest.raises(ValueError, match="thread clock.*threads=1"):
        with get_backend("torch-cpu", threads=2, settings=TimingSettings(clock="thread")):
            pass
    with pytest.raises(ValueError, match="float32 only"):
        get_backend("onnxruntime", dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        get_backend("torch-cpu", dtype="int4")
    with pytest.raises(ValueError, match="indivisible|not divisible"):
        get_backend("torch-cpu", settings=QUICK).time_layer(GROUPED, 6, 12)


@pytest.mark.parametrize("backend", ["torch-cpu", "onnxruntime"])
def test_measure_latency_leaves_the_model_as_it_was(tiny, backend):
    model, x = tiny
    model.train()
    model.stem[1].eval()  # a mixed state must come back exactly
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stats = halp.measure_latency(model, x, backend=backend, threads=1, warmup=1, repeats=5)
    # five rounds of one forward each: the latency is the median of the five
    assert len(stats.samples) == 5 and len(stats.round_medians_ms) == 5
    assert float(stats) == stats.latency_ms == sorted(stats.samples)[2] > 0
    assert stats.iqr_ms >= 0 and min(stats.samples) <= stats.median_ms <= max(stats.samples)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_measure_many_and_argument_errors(tiny):
    model, x = tiny
    small = type(model)(width=4).eval()
    stats = halp.latency.measure_many([model, small], x, threads=1, warmup=1, repeats=4, rounds=2)
    assert [len(s.samples) for s in stats] == [4, 4]
    with pytest.raises(ValueError, match="repeats"):
        halp.measure_latency(model, x, repeats=0)
    with pytest.raises(ValueError, match="example_inputs"):
        halp.measure_latency(model, "not a tensor")


def test_predicted_latency_of_a_real_profile_is_plausible():
    """A real torch-cpu profile of a small net: predictions within a loose factor of measurements, and a
    much narrower variant predicted faster. Ratios only, loose, as the machine is shared."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 48, 3, padding=1, bias=False), torch.nn.BatchNorm2d(48), torch.nn.ReLU(),
        torch.nn.Conv2d(48, 96, 3, padding=1, bias=False), torch.nn.BatchNorm2d(96), torch.nn.ReLU(),
        torch.nn.Conv2d(96, 32, 1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
    ).eval()
    x = torch.randn(1, 3, 24, 24)
    table = halp.profile(model, x, threads=1, progress=False, warmup=2, repeats=5, min_time_ms=2.0, grid_points=4,
                         fine_span=4, calibration_samples=4, calibration_rounds=2, e2e_repeats=6)
    graph = halp.build_graph(model, x)
    dense_pred = halp.predict_latency(model, x, table)
    dense_meas = halp.measure_latency(model, x, threads=1, warmup=3, repeats=15).median_ms
    assert 0.33 < dense_pred / dense_meas < 3.0
    narrow = {g.name: max(1, g.channels // 4) for g in graph.prunable_groups}
    assert halp.latency.predict_from_widths(graph, table, narrow) < dense_pred


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_cuda_backend(tiny, dtype):
    model, x = tiny
    be = get_backend("torch-cuda", dtype=dtype, settings=QUICK)
    with be:
        assert torch.backends.cudnn.benchmark
        assert be.time_layer(CONV, 6, 10).median_ms > 0
        assert be.time_op("relu", 1, 8, (4, 4)).median_ms > 0
    stats = halp.measure_latency(model, x, backend="torch-cuda", dtype=dtype, warmup=2, repeats=5)
    assert stats.median_ms > 0 and next(model.parameters()).device.type == "cpu"  # the model stays put
    table = halp.profile(model, x, backend="torch-cuda", dtype=dtype, progress=False, warmup=1, repeats=3,
                         grid_points=3, fine_span=4, calibration_samples=3)
    assert table.dtype == dtype and table.meta["device"] == torch.cuda.get_device_name()
    assert halp.predict_latency(model, x, table) > 0


def test_onnxruntime_profile_end_to_end(tiny):
    model, x = tiny
    table = halp.profile(model, x, backend="onnxruntime", threads=1, progress=False, warmup=1, repeats=3,
                         min_time_ms=0.0, grid_points=3, fine_span=3, calibration_samples=3, calibration_rounds=1,
                         e2e_repeats=3)
    assert table.backend == "onnxruntime" and table.meta["versions"]["onnxruntime"]
    assert table.covers(halp.build_graph(model, x)) == []
    assert halp.predict_latency(model, x, table) > 0
    with pytest.raises(ValueError, match="backend 'torch-cpu'"):
        table.check_compatible(backend="torch-cpu")
