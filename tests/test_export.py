"""ONNX export: the file passes onnx.checker and ONNX Runtime reproduces the torch output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import halp


def _ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar"])
def test_onnx_export_matches_torch(tmp_path, name):
    torch.manual_seed(0)
    model = halp.models.create(name)
    model.train()  # export must use inference mode and restore the flag
    x = torch.randn(2, 3, 32, 32)
    path = halp.export_onnx(model, x, tmp_path / f"{name}.onnx")
    assert model.training
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = _ort(path, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_onnx_export_of_a_slim_model_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = halp.models.create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    graph = halp.build_graph(model, x)
    keep = {g.name: torch.arange(g.channels // 2) for g in graph.prunable_groups}
    slim = halp.prune_channels(model, graph, keep)
    path = halp.export_onnx(slim, x, tmp_path / "slim.onnx", dynamic_batch=True)
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = slim(x3).numpy()
    np.testing.assert_allclose(_ort(path, x3), want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_export_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="example_inputs"):
        halp.export_onnx(torch.nn.Linear(2, 2), [1, 2], tmp_path / "x.onnx")
