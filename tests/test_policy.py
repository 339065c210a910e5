"""Retention policy, alias and name validation: pure logic, no MLflow."""

import pytest

from mlflow_ddsp.checkpoint import RetentionPolicy, validate_alias, validate_model_name
from mlflow_ddsp.errors import ConfigError


@pytest.mark.parametrize(
    "interval_val, interval_force_save, expected",
    [
        (2000, 3000, r"interval_force_save=3000 must be a positive multiple of train.interval_val=2000"),
        (2000, 0, r"interval_force_save=0 must be a positive multiple of train.interval_val=2000"),
        (2000, -4000, r"interval_force_save=-4000"),
        (2000, 1000, r"interval_force_save=1000 must be a positive multiple"),
        (2000, 2000.0, r"interval_force_save=2000.0"),
        (2000, True, r"interval_force_save=True"),
        (0, 10, r"train.interval_val=0 must be a positive integer"),
        (-5, 10, r"train.interval_val=-5"),
        ("10", 10, r"train.interval_val='10'"),
    ],
)
def test_invalid_intervals_name_both_values(interval_val, interval_force_save, expected):
    with pytest.raises(ConfigError, match=expected):
        RetentionPolicy(interval_val, interval_force_save)


def test_lcm_trap_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        RetentionPolicy(2000, 3000)
    assert "e.g. 10000" in str(info.value)
    assert "lcm" in str(info.value)


@pytest.mark.parametrize(
    "interval_val, interval_force_save, step, kind",
    [
        (10, 30, 10, "rolling"),
        (10, 30, 30, "force_saved"),
        (10, 30, 60, "force_saved"),
        (10, 30, 65, "rolling"),  # an interrupt save between validations
        (10, None, 1000, "rolling"),
        (10, None, 0, "force_saved"),  # upstream's model_0.pt is never deleted
        (5, 5, 5, "force_saved"),
    ],
)
def test_kind_of_step(interval_val, interval_force_save, step, kind):
    assert RetentionPolicy(interval_val, interval_force_save).kind(step) == kind


@pytest.mark.parametrize("alias", ["latest", "LATEST", "Latest", "v1", "V12", "v0"])
def test_reserved_aliases_are_refused(alias):
    with pytest.raises(ConfigError, match=rf"alias={alias!r} is reserved by MLflow"):
        validate_alias(alias)


@pytest.mark.parametrize("alias", ["", "has space", "a/b", "x" * 256, None, 3])
def test_malformed_aliases_are_refused(alias):
    with pytest.raises(ConfigError, match=r"not a valid model alias"):
        validate_alias(alias)


@pytest.mark.parametrize("alias", ["rolling", "latest_ckpt", "rolling-latest", "v1a", "x" * 255])
def test_accepted_aliases(alias):
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("name", ["", " voice", "a/b", "a:b", "a@b", "it's", 'q"', None])
def test_model_names_that_would_break_uris_are_refused(name):
    with pytest.raises(ConfigError, match=r"registered_model="):
        validate_model_name(name)
