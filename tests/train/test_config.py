"""Config loading: types, unknown keys with suggestions, overrides, round trip."""

import pytest

from seqlab.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
)


def test_demo_config_loads_with_overrides():
    cfg = load_config("seqlab/configs/demo.yaml",
                      ["model.d_model=96", "train.lr=1e-3", "data.size=7"])
    assert cfg.model.d_model == 96
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model.mixer_args["init"] == "inv"
    assert cfg.data.options["size"] == 7 and cfg.data.options["max_depth"] == 4
    assert cfg.data.sizes == {"train": 4000, "val": 500, "test": 500}


def test_round_trip():
    cfg = load_config("demo", ["model.pattern=[s4d, hydra]"])
    assert cfg.model.pattern == ("s4d", "hydra")
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    assert "pattern:" in dump_config(cfg)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"model": {"d_modle": 3}}, ["model.d_modle", "d_model"]),
        ({"trian": {}}, ["trian", "train"]),
        ({"model": {"d_model": "big"}}, ["model.d_model", "int"]),
        ({"model": {"norm": "group"}}, ["model.norm", "'batch'"]),
        ({"train": {"lr": True}}, ["train.lr", "float"]),
        ({"model": 3}, ["model", "mapping"]),
    ],
)
def test_bad_configs_name_the_key(raw, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    for w in words:
        assert w in str(e.value)


def test_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("model.d_model")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
