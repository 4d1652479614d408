"""`halp profile | latency | plot | export` run in-process on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from halp.cli.main import main
from halp.cli.profile import parse_input

TINY = ["--input", "1x3x12x12", "--threads", "1", "--warmup", "1", "--repeats", "3", "--grid-points", "3",
        "--fine-span", "4", "--calibration-samples", "2"]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "r20.json"
    assert main(["-q", "profile", "--model", "resnet20", "-o", str(path), *TINY]) == 0
    return path


def test_profile_writes_a_table(table_path, capsys):
    data = json.loads(table_path.read_text())
    assert data["format"] == "halp-latency-table" and data["meta"]["threads"] == 1
    assert data["meta"]["model"]["name"] == "resnet20" and data["meta"]["model"]["input_shapes"] == [[1, 3, 12, 12]]
    assert not table_path.with_name(table_path.name + ".partial.json").exists()
    # rerun: the finished table is reused, nothing measured
    assert main(["-q", "profile", "--model", "resnet20", "-o", str(table_path), *TINY]) == 0
    assert "reused it, measured nothing" in capsys.readouterr().out


def test_profile_recalibrate_rewrites_only_the_calibration(table_path, tmp_path, capsys):
    import shutil

    path = tmp_path / "copy.json"
    shutil.copy(table_path, path)
    before = json.loads(path.read_text())
    assert main(["-q", "profile", "--model", "resnet20", "-o", str(path), "--recalibrate", *TINY]) == 0
    assert "recalibrated" in capsys.readouterr().out
    after = json.loads(path.read_text())
    assert after["layers"] == before["layers"] and after["ops"] == before["ops"]  # nothing re-profiled
    assert "recalibrated" in after["meta"] and "recalibrated" not in before["meta"]
    assert len(after["calibration"]["samples"]) == len(before["calibration"]["samples"])
    missing = tmp_path / "none.json"
    assert main(["-q", "profile", "--model", "resnet20", "-o", str(missing), "--recalibrate", *TINY]) == 2
    assert "needs an existing table" in capsys.readouterr().err


def test_latency_prints_predicted_measured_and_ratio(table_path, capsys):
    assert main(["latency", "resnet20", "--table", str(table_path), "--repeats", "5"]) == 0
    out = capsys.readouterr().out
    pred = float(out.split("predicted:")[1].split("ms")[0])
    meas = float(out.split("measured:")[1].split("ms")[0])
    ratio = float(out.split("ratio predicted/measured:")[1])
    assert pred > 0 and meas > 0 and ratio == pytest.approx(pred / meas, rel=2e-3)


def test_latency_with_a_mismatched_batch_is_a_clear_error(table_path, capsys):
    assert main(["latency", "resnet20", "--table", str(table_path), "--input", "4x3x12x12", "--no-measure"]) == 2
    assert "batch 4 (table: 1)" in capsys.readouterr().err


def test_plot_layer_staircase(table_path, tmp_path):
    from halp.latency import LatencyTable
    from halp.plots import layer_staircase

    out = tmp_path / "fig.png"
    assert main(["plot", str(table_path), "--layer", "layer3.0.conv1", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = layer_staircase(LatencyTable.load(table_path), "layer3.0.conv1")
    # FLOPs grow linearly with output channels
    assert np.all(np.diff(data["flops"]) > 0)
    ratio = data["flops"] / data["channels"]
    assert np.allclose(ratio, ratio[0])


def test_plot_errors(table_path, tmp_path, capsys):
    assert main(["plot", str(table_path), "--layer", "nope"]) == 2
    assert "no layer named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["plot", str(bad), "--layer", "x"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_export_cli(tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", "resnet20", "--onnx", str(out), "--input", "1x3x16x16"]) == 0
    import onnx

    onnx.checker.check_model(str(out))


def test_parse_input():
    assert parse_input("1x3x224x224") == (1, 3, 224, 224)
    for bad in ("1x3xAx4", "0x3x4x4", "5"):
        with pytest.raises(ValueError, match="--input"):
            parse_input(bad)
    with pytest.raises(SystemExit):
        main(["profile", "--model", "resnet20"])  # -o is required: argparse exits


def test_cli_backend_names_are_the_librarys():
    import halp.cli.profile as cli_profile
    from halp.latency import BACKENDS

    assert cli_profile.BACKENDS == BACKENDS


def test_cli_int8_profile_and_latency_on_another_backend(tmp_path, capsys):
    pytest.importorskip("openvino")
    path = tmp_path / "r20_ort8.json"
    assert main(["-q", "profile", "--model", "resnet20", "--backend", "onnxruntime-int8", "-o", str(path), *TINY]) == 0
    meta = json.loads(path.read_text())["meta"]
    assert meta["backend"] == "onnxruntime-int8" and meta["dtype"] == "int8"
    assert meta["backend_options"]["precision"] == "int8"
    capsys.readouterr()
    assert main(["-q", "latency", "resnet20", "--table", str(path), "--backend", "openvino", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime-int8" in out and "interleaved rounds; IQR" in out and ", openvino)" in out
    measured = float(out.split("measured:")[1].split("ms")[0])
    assert measured > 0
