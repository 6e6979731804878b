"""DENConfig validation and loading."""

import dataclasses
import json

import pytest
import yaml

from den_jax.den import DENConfig, config_from_dict, config_to_dict, load_config

# (field, bad value, fragment of the message naming the allowed range)
BAD_VALUES = [
    ("l1_lambda", -1e-5, "[0.0, inf)"),
    ("group_lambda", -0.1, "[0.0, inf)"),
    ("l2_lambda", float("nan"), "[0.0, inf)"),
    ("drift_lambda", -1.0, "[0.0, inf)"),
    ("expansion_threshold", -0.5, "[0.0, inf)"),
    ("drift_threshold", float("inf"), "[0.0, inf)"),
    ("learning_rate", 0.0, "(0.0, inf)"),
    ("learning_rate", "fast", "must be a number"),
    ("lr_decay_rate", 1.5, "(0.0, 1.0]"),
    ("lr_decay_rate", 0.0, "(0.0, 1.0]"),
    ("l1_lambda", True, "must be a number"),
    ("new_nodes_k", 0, "integers >= 1"),
    ("new_nodes_k", 2.5, "integer >= 1"),
    ("new_nodes_k", [0, 0], "at least one >= 1"),
    ("new_nodes_k", [3, -1], "integers >= 0"),
    ("new_nodes_k", [], "one per hidden layer"),
    ("new_nodes_k", [2, 1.5], "integers >= 0"),
    ("max_splits_per_layer", -1, "integers >= 0"),
    ("steps_task1", 0, "integers >= 1"),
    ("steps_head", 0, "integers >= 1"),
    ("steps_selective", -3, "integers >= 1"),
    ("steps_expand", 0, "integers >= 1"),
    ("steps_split_pretrain", -1, "integers >= 0"),
    ("steps_split", 0, "integers >= 1"),
    ("batch_size", 0, "integers >= 1"),
    ("batch_size", "256", "integer >= 1"),
    ("lr_decay_steps", 0, "integers >= 1"),
    ("seed", -1, "integers >= 0"),
    ("eval_batch_size", 0, "integers >= 1"),
    ("loss", "mse", "softmax_ce"),
    ("prox_scale", "sqrt", "'lr', 'none', 'adam'"),
    ("split_when", "sometimes", "after_expansion"),
    ("split_retrain", "old", "'all', 'new'"),
    ("opt_state_policy", "keep", "'reset', 'grow'"),
    ("expansion_loss_on", "test", "'valid', 'train'"),
    ("head_l1_lambda", -0.01, "[0.0, inf)"),
    ("head_l1_lambda", "strong", "null (l1_lambda)"),
    ("selective_retraining", "gathered", "'masked', 'compact'"),
]


def test_every_field_has_a_bad_value_case():
    covered = {name for name, _, _ in BAD_VALUES}
    assert covered == {f.name for f in dataclasses.fields(DENConfig)}


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES)
def test_bad_value_rejected_with_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        config_from_dict({field: value})
    msg = str(info.value)
    assert f"DENConfig.{field}" in msg
    assert repr(value) in msg
    assert allowed in msg


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match=r"unknown DENConfig key\(s\) \['tau'\]"):
        config_from_dict({"tau": 0.1})
    with pytest.raises(ValueError, match="mapping"):
        config_from_dict([("l1_lambda", 0.1)])


def test_defaults_valid_and_roundtrip(tmp_path):
    cfg = DENConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"new_nodes_k": 5, "drift_threshold": 1}))
    loaded = load_config(p)
    assert loaded.new_nodes_k == 5 and loaded.drift_threshold == 1
    y = tmp_path / "k.yaml"
    y.write_text("new_nodes_k: [40, 10]\n")
    per_layer = load_config(y)
    assert per_layer.new_nodes_k == (40, 10)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(per_layer)))) == per_layer
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"den": {"split_when": "after_expansion"}}))
    assert load_config(y).split_when == "after_expansion"
    bad = tmp_path / "c.yaml"
    bad.write_text("batch_size: 0\n")
    with pytest.raises(ValueError, match="DENConfig.batch_size=0"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        load_config(tmp_path / "c.txt")


@pytest.mark.parametrize("name", ["den_permuted_mnist.yaml", "den_sklearn_hetero.yaml"])
def test_shipped_configs_load(name):
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / name
    assert isinstance(load_config(path), DENConfig)
