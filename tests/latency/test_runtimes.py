"""The deployment runtimes: OpenVINO (FP32) and the INT8 backends of ONNX Runtime and OpenVINO.

Numbers asserted: INT8 outputs close to FP32, tables with entries and metadata naming runtime and
precision, positive finite latencies; never a wall-clock threshold.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch

import halp
from halp.graph.types import LayerShape
from halp.latency.backends import BACKENDS, get_backend
from halp.latency.onnx_layers import single_layer_model
from halp.latency.qdq import calibration_feeds, quantized_layer_model
from halp.latency.timing import TimingSettings

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

QUICK = TimingSettings(warmup=1, warmup_ms=0, repeats=3, min_time_ms=0, max_repeats=3)
CONV = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), in_hw=(9, 9), bias=True)
DW = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), groups=0, in_hw=(8, 8))
LIN = LayerShape("linear", batch=1, bias=True)
NEW = ["openvino", "onnxruntime-int8", "openvino-int8"]
INT8 = ["onnxruntime-int8", "openvino-int8"]


def _batches(n: int = 8, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("backend", NEW)
def test_new_backends_time_layers_ops_and_networks(tiny, backend):
    model, x = tiny
    assert backend in BACKENDS
    be = get_backend(backend, threads=1, settings=QUICK)
    with be:
        # onnxruntime-int8 takes one session call off every sample: a tiny layer or op may reach 0
        low = 0.0 if backend == "onnxruntime-int8" else math.ulp(0.0)
        for shape, cin, cout in [(CONV, 6, 10), (DW, 12, 12), (LIN, 6, 7)]:
            st = be.time_layer(shape, cin, cout)
            assert len(st.samples) == 3 and low <= st.median_ms < math.inf
        for kind in ("add", "cat", "maxpool", "adaptive_avgpool"):
            assert low <= be.time_op(kind, 1, 8, (4, 4)).median_ms < math.inf
        # onnxruntime-int8 times an op behind its producer conv, which absorbs a BatchNorm (0 ms there)
        bn = be.time_op("batchnorm", 1, 8, (4, 4)).median_ms
        assert bn == 0.0 if backend == "onnxruntime-int8" else 0 < bn < math.inf
        stats = be.time_models([model, type(model)(width=8).eval()], x, rounds=1)
    assert all(0 < s.median_ms < math.inf for s in stats)
    options = be.options()
    assert options["runtime"] == backend.split("-")[0]
    assert options["precision"] == ("int8" if backend in INT8 else "float32")
    assert be.dtype == ("int8" if backend in INT8 else "float32")
    if backend.startswith("openvino"):
        assert options["INFERENCE_NUM_THREADS"] == 1 and options["PERFORMANCE_HINT"] == "LATENCY"
        assert be.info()["openvino"]


def test_int8_single_layer_runs_uint8_kernels():
    """The table's INT8 points are the quantized kernels with uint8 in and out, as inside a network."""
    import onnx
    import onnxruntime as ort
    import openvino as ov

    data, name, x = single_layer_model(CONV, 16, 16)
    with tempfile.TemporaryDirectory() as tmp:
        qdata, feed = quantized_layer_model(data, {name: x}, tmp)
        model = onnx.load_from_string(qdata)
        assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8]
        assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.UINT8]
        assert next(iter(feed.values())).dtype == np.uint8
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(qdata, opts, providers=["CPUExecutionProvider"])
        assert "QLinearConv" in [n.op_type for n in onnx.load(f"{tmp}/opt.onnx").graph.node]
        path = f"{tmp}/q.onnx"
        open(path, "wb").write(qdata)
        be = get_backend("openvino-int8", threads=1)
        runtime = be.compile(path).get_runtime_model()
    convs = [op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert convs == ["u8"]
    assert isinstance(ov.__version__, str)


@pytest.mark.parametrize("backend", INT8)
def test_int8_network_output_close_to_float(tiny, backend):
    """A network quantized with calibration batches computes nearly what the float model does."""
    model, _ = tiny
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    be = get_backend(backend, threads=1, calibration_data=_batches())
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "onnxruntime-int8":
            import onnxruntime as ort

            path = be.quantized_onnx(model, (x,), f"{tmp}/m.onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            assert "QuantizeLinear" in {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
        else:
            compiled = be.compile(be.quantized_network(model, (x,), tmp))
            got = compiled({0: x.numpy()})[compiled.outputs[0]]
            ops = compiled.get_runtime_model().get_ordered_ops()
            precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in ops
                          if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
            assert precisions and precisions <= {"u8", "i8"}  # every conv runs an INT8 kernel
    assert got.shape == want.shape
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.1, rel


@pytest.mark.parametrize("backend", INT8)
def test_int8_profile_predict_and_measure(tiny, backend):
    model, x = tiny
    table = halp.profile(model, x, backend=backend, threads=1, progress=False, warmup=1, repeats=3, min_time_ms=0.0,
                         grid_points=2, fine_span=2, calibration_samples=2, calibration_rounds=1, e2e_repeats=3,
                         calibration_data=_batches(2))
    assert table.backend == backend and table.dtype == "int8"
    assert table.meta["backend_options"]["precision"] == "int8"
    assert table.meta["backend_options"]["runtime"] == backend.split("-")[0]
    assert len(table.entries) >= 4 and table.ops
    assert table.covers(halp.build_graph(model, x)) == []
    assert 0 < halp.predict_latency(model, x, table) < math.inf
    stats = halp.measure_latency(model, x, backend=table.backend, dtype=table.dtype, threads=1, warmup=1, repeats=3)
    assert len(stats.samples) == 3 and 0 < stats.median_ms < math.inf
    if backend == "openvino-int8":
        assert table.meta["versions"]["openvino"]


@pytest.mark.parametrize("quantizer", ["nncf-onnx", "nncf-openvino"])
def test_openvino_int8_with_nncf(tiny, quantizer):
    """NNCF quantizes the network instead (the options the default was chosen against): still close to float."""
    from halp.latency.openvino_backend import OpenVinoInt8Backend

    model, _ = tiny
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    be = OpenVinoInt8Backend(threads=1, calibration_data=_batches(), quantizer=quantizer)
    assert be.options()["quantizer"] == quantizer
    with tempfile.TemporaryDirectory() as tmp:
        compiled = be.compile(be.quantized_network(model, (x,), tmp))
    got = compiled({0: x.numpy()})[compiled.outputs[0]]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.1
    with pytest.raises(ValueError, match="quantizer must be one of"):
        OpenVinoInt8Backend(quantizer="pot")


def test_runtime_argument_errors(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match="unknown latency backend 'tensorrt'.*openvino-int8"):
        get_backend("tensorrt")
    with pytest.raises(ValueError, match="float32 only"):
        get_backend("openvino", dtype="float16")
    with pytest.raises(ValueError, match="dtype must be 'int8'"):
        get_backend("openvino-int8", dtype="bfloat16")
    with pytest.raises(ValueError, match="calibration_data quantizes networks for the INT8 backends"):
        halp.measure_latency(model, x, backend="onnxruntime", calibration_data=_batches(1))
    with pytest.raises(ValueError, match="no calibration samples"):
        halp.measure_latency(model, x, backend="onnxruntime-int8", calibration_data=[], repeats=1)
    with pytest.raises(ValueError, match="does not fit the model's inputs"):
        calibration_feeds([torch.randn(2, 1, 8, 8)], (x,))
    with pytest.raises(ValueError, match="tensors or"):
        calibration_feeds(["not a tensor"], (x,))


def test_calibration_feeds_split_batches_and_loaders(tiny):
    _, x = tiny
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(10, 3, 8, 8),
                                                                        torch.zeros(10, dtype=torch.long)), batch_size=4)
    feeds = calibration_feeds(loader, (x,))
    assert len(feeds) == 10 and all(f[0].shape == (1, 3, 8, 8) and f[0].dtype == np.float32 for f in feeds)
    assert len(calibration_feeds(loader, (x,), limit=3)) == 3
    assert np.array_equal(calibration_feeds(None, (x,))[0][0], x.numpy())
