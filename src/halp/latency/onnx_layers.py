"""Single-layer ONNX graphs, built directly with ``onnx.helper``.

Profiling an ONNX Runtime table needs thousands of one-layer models; exporting each through torch takes
far longer than running it. A Conv or Gemm node with random initialisers is a few lines of protobuf.
"""

from __future__ import annotations

import numpy as np

from halp.graph.types import LayerShape

OPSET = 17
IR_VERSION = 9  # understood by every onnxruntime >= 1.15


def conv_out_hw(shape: LayerShape) -> tuple[int, int]:
    """Output spatial size of a conv described by ``shape`` (PyTorch's formula)."""
    out = []
    for i in range(2):
        size = shape.in_hw[i] + 2 * shape.padding[i] - shape.dilation[i] * (shape.kernel[i] - 1) - 1
        out.append(size // shape.stride[i] + 1)
    return out[0], out[1]


def conv_groups(shape: LayerShape, cin: int, cout: int) -> int:
    """The ``groups`` argument of the real conv: depthwise = one group per channel."""
    if shape.depthwise:
        return cout
    return max(int(shape.groups), 1)


def single_layer_model(
    shape: LayerShape, cin: int, cout: int, in_repeat: int = 1, seed: int = 0
) -> tuple[bytes, str, np.ndarray]:
    """A serialised one-node ONNX model for ``shape`` at ``cin`` → ``cout`` channels.

    Returns:
        the model bytes, the input name and a random float32 input for it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if shape.kind == "linear":
        features = cin * max(int(in_repeat), 1)
        x = rng.standard_normal((shape.batch, features), dtype=np.float32)
        weight = (rng.standard_normal((cout, features)) * np.sqrt(1.0 / features)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "W"))
        bias_name = "B"
        bias = np.zeros(cout, np.float32) if not shape.bias else rng.standard_normal(cout).astype(np.float32)
        inits.append(numpy_helper.from_array(bias, bias_name))  # Gemm needs C for a fair comparison
        nodes.append(helper.make_node("Gemm", ["X", "W", bias_name], ["Y"], transB=1))
        out_shape = [shape.batch, cout]
    elif shape.kind == "conv2d":
        groups = conv_groups(shape, cin, cout)
        if shape.depthwise:
            cin = cout
        if cin % groups or cout % groups:
            raise ValueError(f"channels {cin}->{cout} are not divisible by the conv's {groups} groups")
        kh, kw = shape.kernel
        h, w = shape.in_hw
        x = rng.standard_normal((shape.batch, cin, h, w), dtype=np.float32)
        fan_in = (cin // groups) * kh * kw
        weight = (rng.standard_normal((cout, cin // groups, kh, kw)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "W"))
        inputs = ["X", "W"]
        if shape.bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B"))
            inputs.append("B")
        ph, pw = shape.padding
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                ["Y"],
                kernel_shape=[kh, kw],
                strides=list(shape.stride),
                pads=[ph, pw, ph, pw],
                dilations=list(shape.dilation),
                group=groups,
            )
        )
        oh, ow = conv_out_hw(shape)
        out_shape = [shape.batch, cout, oh, ow]
    else:
        raise ValueError(f"cannot build an ONNX layer of kind {shape.kind!r}; expected 'conv2d' or 'linear'")
    graph = helper.make_graph(
        nodes,
        "halp_layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="halp")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString(), "X", x
