import pytest

from halp.config import PruneConfig


def test_json_round_trip():
    cfg = PruneConfig(target=0.3, steps=5, interval=7, grouping=16, protect=("layer1.*",),
                      grouping_overrides={"conv1": 2}, importance="magnitude")
    again = PruneConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.protect == ("layer1.*",)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"target": 0.0}, "target"),
        ({"target": 1.5}, "target"),
        ({"target_ms": -1.0}, "target_ms"),
        ({"steps": 0}, "steps"),
        ({"interval": 2.5}, "interval"),
        ({"start": -1}, "start"),
        ({"importance": "l1"}, "importance"),
        ({"grouping": "big"}, "grouping"),
        ({"grouping": 0}, "grouping"),
        ({"grouping_overrides": {"a": 0}}, "grouping_overrides"),
        ({"protect": "conv1"}, "protect"),
        ({"min_fraction": 1.0}, "min_fraction"),
        ({"refine_tolerance": -0.1}, "refine_tolerance"),
    ],
)
def test_validation_names_the_field(kwargs, word):
    with pytest.raises(ValueError, match=word):
        PruneConfig(**kwargs)


def test_unknown_field_from_dict():
    with pytest.raises(ValueError, match="unknown PruneConfig field"):
        PruneConfig.from_dict({"targt": 0.5})


def test_absolute_budget_ignores_fraction():
    assert PruneConfig(target_ms=3.0, target=1.0).target_ms == 3.0
