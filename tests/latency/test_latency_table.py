"""LatencyTable: file format, validation, lookups (interpolation, staircase, extrapolation policy)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from halp.graph.types import ChannelGraph, ChannelGroup, Layer, LayerShape, OtherOp
from halp.latency.table import Calibration, LatencyTable, LayerEntry, OpModel

CONV = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), (1, 1), 1, (14, 14))
DW = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), (1, 1), 0, (14, 14))


def bilin(ci, co):
    return 0.01 + 0.002 * ci + 0.003 * co + 1e-4 * ci * co


def make_table(fine: bool = True, small_entry: bool = True) -> LatencyTable:
    cin = np.array([1, 8, 16, 32])
    cout = np.array([1, 16, 32, 48, 64])
    med = bilin(cin[:, None], cout[None, :]).astype(float)
    noise = np.full_like(med, 0.001)
    fc = np.arange(57, 65) if fine else np.zeros(0, dtype=np.int64)
    # a staircase on the full-cin row: flat over 57..64 at the value of 64
    fm = np.full(fc.size, bilin(32, 64)) if fine else np.zeros(0)
    dense = LayerEntry(CONV, 1, 32, 64, cin, cout, med, noise, fc, fm, np.full(fc.size, 0.001), ["a.conv"])
    # a second, smaller entry of the same shape key
    cin2, cout2 = np.array([1, 8, 16]), np.array([1, 8, 16])
    small = LayerEntry(CONV, 1, 16, 16, cin2, cout2, 2 * bilin(cin2[:, None], cout2[None, :]),
                       np.zeros((3, 3)), layers=["b.conv"])
    ch = np.array([1, 8, 16, 24, 32])
    dw = LayerEntry(DW, 1, 32, 32, ch, ch, 0.001 * ch + 0.01, np.zeros(5), np.arange(29, 33),
                    0.001 * np.arange(29, 33) + 0.02, np.zeros(4), ["dw"])
    meta = {"backend": "torch-cpu", "device": "test cpu", "batch": 1, "dtype": "float32", "threads": 2,
            "date": "2025-01-01T00:00:00+00:00", "settings": {"repeats": 3}}
    ops = {"relu": OpModel(0.005, 0.5, [[1, 8, 4, 4, 0.1, 0.0]])}
    entries = [dense, small, dw] if small_entry else [dense, dw]
    return LatencyTable(meta, entries, ops, Calibration(1.1, 0.9, 0.05, "nnls", []))


def layer(shape: LayerShape, cin: int, cout: int, name: str = "x") -> Layer:
    return Layer(name, shape, (("gi", cin),), (("go", cout),))


def test_round_trip_preserves_everything(tmp_path):
    t = make_table()
    path = t.save(tmp_path / "t.json")
    data = json.loads(path.read_text())  # plain JSON, no pickle
    assert data["format_version"] == 1 and data["meta"]["device"] == "test cpu"
    u = LatencyTable.load(path)
    assert u.meta == t.meta and u.to_dict() == t.to_dict()
    for a, b in zip(t.entries, u.entries):
        assert a.id == b.id and a.layers == b.layers
        np.testing.assert_array_equal(a.median_ms, b.median_ms)
        np.testing.assert_array_equal(a.fine_median_ms, b.fine_median_ms)
    assert (u.calibration.a, u.calibration.b, u.calibration.c) == (1.1, 0.9, 0.05)
    rng = np.random.default_rng(0)
    ci, co = rng.integers(1, 33, 50), rng.integers(1, 65, 50)
    np.testing.assert_array_equal(t.layer_latency(layer(CONV, 32, 64), ci, co), u.layer_latency(layer(CONV, 32, 64), ci, co))


def test_exact_at_grid_points_and_bilinear_between():
    t = make_table(fine=False, small_entry=False)
    e = t.entries[0]
    lay = layer(CONV, 32, 64)
    for i, ci in enumerate(e.cin):
        for j, co in enumerate(e.cout):
            assert t.layer_latency(lay, int(ci), int(co)) == e.median_ms[i, j]  # bit-exact
    # the grid holds a bilinear function, so interpolation is exact everywhere inside (32x64 covers it)
    ci, co = np.meshgrid(np.arange(17, 33), np.arange(17, 65), indexing="ij")
    np.testing.assert_allclose(t.layer_latency(lay, ci, co), bilin(ci, co), rtol=1e-12)


def test_smallest_covering_entry_is_used():
    t = make_table(fine=False)
    small = layer(CONV, 16, 16, "b.conv")
    # inside the small entry's grid, its (doubled) values win, whichever layer asks
    assert t.layer_latency(small, 8, 8) == pytest.approx(2 * bilin(8, 8))
    assert t.layer_latency(layer(CONV, 32, 64), 8, 8) == pytest.approx(2 * bilin(8, 8))
    # beyond it, the dense entry serves
    assert t.layer_latency(small, 16, 17) == pytest.approx(bilin(16, 17))
    assert t.entry_for(layer(CONV, 32, 64)).cin_full == 32
    assert t.entry_for(small).cin_full == 16


def test_fine_sweep_restores_staircase():
    t = make_table(fine=True)
    lay = layer(CONV, 32, 64)
    # at full cin the fine sweep is returned exactly: flat at the value of 64 channels
    np.testing.assert_array_equal(t.layer_latency(lay, 32, np.arange(57, 65)), np.full(8, bilin(32, 64)))
    # coarse grid points are untouched (ratio 1), and at other cin the ripple is scaled
    assert t.layer_latency(lay, 16, 64) == bilin(16, 64)
    v = t.layer_latency(lay, 16, 60)
    assert v == pytest.approx(bilin(16, 60) * bilin(32, 64) / bilin(32, 60))
    ch, med, noise = t.cout_sweep(lay)
    np.testing.assert_array_equal(ch, np.arange(57, 65))
    assert med.shape == noise.shape == (8,)


def test_depthwise_is_one_dimensional():
    t = make_table()
    dw = Layer("dw", DW, (("g", 32),), (("g", 32),))
    assert t.layer_latency(dw, 24, 24) == pytest.approx(0.001 * 24 + 0.01)
    assert t.layer_latency(dw, 20, 20) == pytest.approx(0.001 * 20 + 0.01)
    assert t.layer_latency(dw, 30, 30) == pytest.approx(0.001 * 30 + 0.02)  # fine sweep, exact


def test_zero_width_costs_nothing_and_negative_is_an_error():
    t = make_table()
    lay = layer(CONV, 32, 64)
    assert t.layer_latency(lay, 0, 10) == 0.0 and t.layer_latency(lay, 10, 0) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        t.layer_latency(lay, -1, 10)


def test_extrapolation_policy(caplog):
    t = make_table(fine=False)
    lay = layer(CONV, 32, 64)
    with pytest.raises(ValueError, match="outside the profiled range"):
        t.layer_latency(lay, 40, 64, extrapolate="raise")
    with caplog.at_level(logging.WARNING, logger="halp.latency.table"):
        v1 = t.layer_latency(lay, 40, 64, extrapolate="warn")
        v2 = t.layer_latency(lay, 48, 64, extrapolate="warn")
    assert v1 == pytest.approx(bilin(40, 64)) and v2 == pytest.approx(bilin(48, 64))  # linear continuation
    assert sum("extrapolating" in r.message for r in caplog.records) == 1  # warned once
    with pytest.raises(ValueError, match="extrapolate must be"):
        t.layer_latency(lay, 8, 8, extrapolate="clip")


def test_unknown_layers_ops_and_covers():
    t = make_table()
    other = LayerShape("conv2d", (5, 5), (1, 1), (2, 2), (1, 1), 1, (14, 14))
    with pytest.raises(KeyError, match="not in the latency table"):
        t.layer_latency(layer(other, 8, 8), 8, 8)
    with pytest.raises(KeyError):
        t.cout_sweep(layer(other, 8, 8))
    groups = (ChannelGroup("gi", 32, True, ()), ChannelGroup("go", 64, True, ()))
    g = ChannelGraph(groups, (layer(CONV, 32, 64, "ok"), layer(other, 32, 64, "missing")),
                     (OtherOp("r", "relu", (("go", 64),), (14, 14)), OtherOp("s", "sigmoid", (("go", 64),), (14, 14))))
    assert t.covers(g) == ["missing", "s"]
    assert t.op_latency("relu", 2e6) == pytest.approx(0.005 + 0.5 * 2)
    # the table's dtype is what counts: a float16 graph shape resolves to the same entry
    half = LayerShape("conv2d", (3, 3), (1, 1), (1, 1), (1, 1), 1, (14, 14), dtype="float16")
    assert t.layer_latency(layer(half, 32, 64), 16, 16) == t.layer_latency(layer(CONV, 32, 64), 16, 16)


def test_check_compatible():
    t = make_table()
    t.check_compatible(backend="torch-cpu", batch=1, dtype="float32", threads=2)
    with pytest.raises(ValueError, match=r"batch 8 \(table: 1\)"):
        t.check_compatible(batch=8)
    with pytest.raises(ValueError, match="backend 'onnxruntime'.*dtype 'float16'"):
        t.check_compatible(backend="onnxruntime", dtype="float16")


def test_unknown_version_is_a_clear_error(tmp_path):
    data = make_table().to_dict()
    data["format_version"] = 99
    p = tmp_path / "v.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version 99.*re-profile"):
        LatencyTable.load(p)


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_file_is_a_clear_error(tmp_path, cut):
    p = make_table().save(tmp_path / "t.json")
    text = p.read_text()
    p.write_text(text[: int(len(text) * cut)])
    with pytest.raises(ValueError, match="corrupt or truncated.*re-profile"):
        LatencyTable.load(p)


def test_missing_or_malformed_fields_are_clear_errors(tmp_path):
    p = tmp_path / "t.json"
    base = make_table().to_dict()
    cases = [
        (lambda d: d.pop("calibration"), "missing field 'calibration'"),
        (lambda d: d["meta"].pop("threads"), "meta is missing 'threads'"),
        (lambda d: d["meta"].__setitem__("batch", "one"), "meta.batch must be int"),
        (lambda d: d["layers"][0].__setitem__("median_ms", [[1.0]]), "layer entry 0 .* malformed"),
        (lambda d: d["layers"][0].__setitem__("cout", [64, 1, 16, 32, 48]), "strictly increasing"),
        (lambda d: d.__setitem__("format", "something-else"), "not a halp latency table"),
    ]
    for mutate, message in cases:
        d = json.loads(json.dumps(base))
        mutate(d)
        p.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=message):
            LatencyTable.load(p)
    with pytest.raises(ValueError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    t = make_table()
    p = t.save(tmp_path / "t.json")
    before = p.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("halp.latency.serial.os.replace", boom)
    with pytest.raises(OSError):
        t.save(p)
    assert p.read_text() == before  # the old file is intact
    assert [f.name for f in tmp_path.iterdir()] == ["t.json"]  # no temp file left behind


def test_scalar_and_vector_lookups_agree_exactly():
    t = make_table(fine=True)
    rng = np.random.default_rng(3)
    for lay in (layer(CONV, 32, 64), layer(CONV, 16, 16), Layer("dw", DW, (("g", 32),), (("g", 32),))):
        ci, co = rng.integers(0, 41, 300), rng.integers(0, 70, 300)  # includes 0 widths and beyond the grid
        vec = t.layer_latency(lay, ci, co)
        one = np.array([t.layer_latency(lay, int(a), int(b)) for a, b in zip(ci, co)])
        np.testing.assert_array_equal(vec, one)


def test_block_staircase_between_grid_points():
    """A 16-channel staircase seen in the fine sweep: between grid points a width costs its block edge."""
    cin = np.array([1, 64, 128])
    cout = np.array([1, 64, 128, 192, 256])
    lin = lambda ci, co: 0.01 + 1e-5 * ci * co  # noqa: E731
    med = lin(cin[:, None], cout[None, :])
    fc = np.arange(225, 257)
    fm = lin(128, np.ceil(fc / 16) * 16)  # flat within each 16-block
    e = LayerEntry(CONV, 1, 128, 256, cin, cout, med, np.zeros_like(med), fc, fm, np.zeros(fc.size), ["s"])
    assert e.cout_step == 16
    t = LatencyTable(make_table().meta, [e])
    lay = layer(CONV, 128, 256)
    assert t.layer_latency(lay, 100, 65) == pytest.approx(lin(100, 80))  # 65 costs like 80
    assert t.layer_latency(lay, 100, 80) == pytest.approx(lin(100, 80))
    assert t.layer_latency(lay, 100, 64) == pytest.approx(lin(100, 64))  # a grid point: as measured
    assert t.layer_latency(lay, 128, 230) == fm[230 - 225]  # the fine sweep: as measured
    ci, co = np.meshgrid(np.arange(1, 129, 7), np.arange(1, 257, 3), indexing="ij")
    one = np.array([t.layer_latency(lay, int(a), int(b)) for a, b in zip(ci.ravel(), co.ravel())])
    np.testing.assert_array_equal(t.layer_latency(lay, ci, co).ravel(), one)
    # the block size is saved with the table
    assert LatencyTable.from_dict(t.to_dict()).entries[0].cout_step == 16


def test_interpolated_flags_and_their_own_calibration_weight(tmp_path):
    t = make_table(small_entry=False)
    big = layer(CONV, 32, 64)
    # grid points and the fine sweep (at full cin) are measured; between grid points is interpolated
    assert not t.layer_interpolated(big, 16, 48) and not t.layer_interpolated(big, 32, 60)
    assert t.layer_interpolated(big, 12, 48) and t.layer_interpolated(big, 16, 40)
    assert t.layer_interpolated(big, 16, 60)  # fine-sweep cout below full cin: a ripple-scaled interpolation
    np.testing.assert_array_equal(t.layer_interpolated(big, np.array([16, 12, 32]), np.array([48, 48, 60])),
                                  [False, True, False])
    assert not t.layer_interpolated(big, 0, 40)  # a removed layer costs nothing either way
    # the scalar fast path (the pruner's inner loop) agrees with the vectorised one everywhere, outside the grid too
    ci, co = np.meshgrid(np.arange(0, 40), np.arange(0, 70), indexing="ij")
    flags = t.layer_interpolated(big, ci, co)
    assert all(bool(flags[i, j]) == t.layer_interpolated(big, int(ci[i, j]), int(co[i, j]))
               for i in range(ci.shape[0]) for j in range(ci.shape[1]))
    dw = layer(DW, 32, 32, "dw")
    assert not t.layer_interpolated(dw, 24, 24) and t.layer_interpolated(dw, 20, 20)
    # the interp weight applies to exactly the interpolated time, and survives a round trip
    t.calibration = Calibration(1.1, 0.9, 0.05, "interp", [], {}, 1.5)
    assert t.calibration.apply(10.0, 2.0, 4.0) == pytest.approx(1.1 * 6 + 1.5 * 4 + 0.9 * 2 + 0.05)
    assert Calibration(1.1, 0.9, 0.05).apply(10.0, 2.0, 4.0) == pytest.approx(1.1 * 10 + 0.9 * 2 + 0.05)
    u = LatencyTable.load(t.save(tmp_path / "t.json"))
    assert u.calibration.d == 1.5 and u.calibration.method == "interp"
