import pytest

from vllm_plphp.config import PlphpConfig, PlphpConfigError, from_dict
from vllm_plphp.request_config import parse_override


def test_defaults_are_the_papers():
    c = PlphpConfig()
    assert (c.r, c.delta_r, c.alpha, c.beta) == (0.4, 0.3, 0.25, 0.1)
    assert [c.is_pruned_layer(i, 24) for i in (0, 1, 2, 22, 23)] == [False, False, True, True, False]


def test_layer_rate_categories():
    c = PlphpConfig()
    assert c.layer_rate(0.25) == pytest.approx(0.7)
    assert c.layer_rate(0.2) == pytest.approx(0.4)
    assert c.layer_rate(0.1) == pytest.approx(0.4)
    assert c.layer_rate(0.05) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "values,field",
    [
        ({"r": 1.5}, "plphp.r=1.5"),
        ({"r": 0.2, "delta_r": 0.3}, "plphp.delta_r=0.3"),
        ({"r": 0.8, "delta_r": 0.3}, "plphp.r=0.8"),
        ({"alpha": 0.1, "beta": 0.2}, "plphp.beta=0.2"),
        ({"alpha": "high"}, "plphp.alpha='high'"),
        ({"gqa_reduce": "median"}, "plphp.gqa_reduce='median'"),
        ({"skip_first": -1}, "plphp.skip_first=-1"),
        ({"bogus": 1}, "unknown plphp setting"),
        ({"preset": "nope"}, "plphp.preset='nope'"),
    ],
)
def test_bad_values_name_field_value_and_range(values, field):
    with pytest.raises(PlphpConfigError, match="allowed") as e:
        from_dict(values, env={})
    assert field in str(e.value)


def test_precedence_env_then_additional_config():
    env = {"PLPHP_R": "0.3", "PLPHP_ALPHA": "0.5"}
    c = from_dict({"alpha": 0.2}, env=env)
    assert (c.r, c.alpha) == (0.3, 0.2)
    with pytest.raises(PlphpConfigError, match="PLPHP_R"):
        from_dict({}, env={"PLPHP_R": "abc"})


def test_presets():
    assert from_dict({"preset": "paper_r0.5"}, env={}).r == 0.5
    assert from_dict({"preset": "paper_r0.3", "r": 0.35}, env={}).r == 0.35


def test_request_override():
    base = PlphpConfig()
    assert parse_override(base, None) is base
    assert parse_override(base, False) is None
    assert parse_override(base, {"r": 0.5}).r == 0.5
    assert parse_override(base, '{"r": 0.5}').r == 0.5
    with pytest.raises(PlphpConfigError, match="vllm_xargs.plphp.r=2"):
        parse_override(base, {"r": 2})
    with pytest.raises(PlphpConfigError, match="unknown key"):
        parse_override(base, {"skip_first": 0})
    assert parse_override(base, {"per_head": False}).per_head is False
    assert parse_override(base, {"per_head": "false"}).per_head is False
    assert parse_override(base, {"per_head": 1}).per_head is True
    with pytest.raises(PlphpConfigError, match="plphp.per_head='no'"):
        parse_override(base, {"per_head": "no"})


def test_flat_request_keys_and_string_forms():
    from vllm_plphp.request_config import config_from_extra_args

    base = PlphpConfig()
    assert config_from_extra_args(base, None) is base
    assert config_from_extra_args(base, {"other": 1}) is base
    assert config_from_extra_args(base, {"plphp_r": 0.5, "plphp_delta_r": 0.1}).delta_r == 0.1
    assert config_from_extra_args(base, {"plphp": "false"}) is None
    assert config_from_extra_args(base, {"plphp": 0, "plphp_r": 0.5}) is None
    with pytest.raises(PlphpConfigError, match="vllm_xargs.plphp.alpha=2"):
        config_from_extra_args(base, {"plphp_alpha": 2})
    with pytest.raises(PlphpConfigError, match="unknown key"):
        config_from_extra_args(base, {"plphp_bogus": 1})


def test_old_vllm_prefixed_env_names_are_refused_naming_the_new_one():
    """vLLM reserves VLLM_* (it warns on names it does not know), so settings
    moved to PLPHP_*; an old name is never silently ignored."""
    with pytest.raises(PlphpConfigError, match="VLLM_PLPHP_R is no longer read.*PLPHP_R"):
        from_dict({}, env={"VLLM_PLPHP_R": "0.3"})
