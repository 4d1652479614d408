"""``halp graph``: the groups of a model, frozen ones with their reasons, as text and JSON."""

from __future__ import annotations

import json

from halp.cli.main import main


def test_graph_lists_groups_and_frozen_reasons(tmp_path, capsys) -> None:
    out = tmp_path / "g.json"
    assert main(["graph", "resnet20", "--input", "1x3x32x32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    info = json.loads(out.read_text())
    assert info["groups"] == len(info["group_list"]) and 0 < info["prunable"] < info["groups"]
    frozen = [g for g in info["group_list"] if not g["prunable"]]
    assert [g["name"] for g in frozen] == ["fc"] and "reaches the network output" in frozen[0]["reason"]
    assert info["frozen_channels"] == 10
    assert "fc" in text and "reaches the network output" in text and f"{info['prunable']} prunable" in text


def test_graph_of_a_detector_is_its_per_image_network(capsys) -> None:
    assert main(["graph", "torchvision:ssdlite320_mobilenet_v3_large", "--num-classes", "3", "--frozen-only",
                 "--no-check"]) == 0
    text = capsys.readouterr().out
    assert "is a detector" in text and "head.classification_head" in text and "cutting through the channel axis" in text


def test_graph_bad_input_is_a_clear_error(capsys) -> None:
    assert main(["graph", "resnet20", "--input", "1x3x32"]) == 2
    assert "error" in capsys.readouterr().err
