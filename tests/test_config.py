"""The run-config table: pyproject defaults, and errors that name the key and the choices."""

from __future__ import annotations

import tomllib

import pytest

from fedmedlora.cli import main as cli_main
from settings.config import KEYS, ConfigError, validate
from support.paths import REPO


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_pyproject_config_and_schema_agree():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "federations" not in pyproject["tool"]["flwr"]
    defaults = _flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert sorted(defaults) == sorted(KEYS)
    assert {k: v for k, v in defaults.items()} == {k: spec.default for k, spec in KEYS.items()}
    validate(defaults)


def test_references_are_generated_from_the_sections(tmp_path, monkeypatch):
    from settings import reference

    assert reference.main(["--check"]) == 0, "run: python -m settings.reference"
    page = (REPO / "docs" / "configuration.md").read_text()
    for key, spec in KEYS.items():  # every key documented, with its default
        assert f"| `{key}` | {spec.type.__name__} | `{reference.toml_value(spec.default)}` |" in page
    # A stale copy is reported and rewritten.
    stale = tmp_path / "pyproject.toml"
    stale.write_text((REPO / "pyproject.toml").read_text().replace("num-server-rounds = 3", "num-server-rounds = 4"))
    monkeypatch.setattr(reference, "PYPROJECT", stale)
    monkeypatch.setattr(reference, "REPO", tmp_path.parent)
    assert reference.main(["--check"]) == 1
    assert reference.main([]) == 0 and "num-server-rounds = 3" in stale.read_text()


def test_every_key_is_typed_and_helped_in_one_section():
    from dataclasses import fields

    from settings.config import SECTIONS

    names = [(f"{p}." if p else "") + f.name.replace("_", "-") for p, s in SECTIONS.items() for f in fields(s)]
    assert names == list(KEYS) and len(set(names)) == len(names)
    assert all(spec.help and spec.type in (int, float, bool, str) for spec in KEYS.values())
    with pytest.raises(ConfigError, match=r"strategy.trim-beta: expected a number in \[0, 0.5\), got nan"):
        validate({"strategy.trim-beta": float("nan")})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora.rank": 8}, "unknown config key.*lora.rank.*lora.r"),
        ({"quantization": "3bit"}, "quantization.*'3bit'.*4bit"),
        ({"strategy.name": "fedfoo"}, "strategy.name.*fedfoo.*fedmedlora-plus"),
        ({"lora.r": "16"}, "lora.r: expected int"),
        ({"strategy.size-weighted": 1}, "strategy.size-weighted: expected true or false"),
        ({"train.lr-scheduler": "step"}, "train.lr-scheduler.*cosine"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"lora.target-modules": " , "}, "lora.target-modules"),
        ({"strategy.temperature": 0.0}, "strategy.temperature"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(overrides)


def test_simulate_rejects_an_unknown_key_before_starting_flower(capsys, tmp_path):
    code = cli_main(["simulate", "--flwr-home", str(tmp_path / "home"), "--run-config", "train.epochs=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "train.local-epochs" in err
    assert not (tmp_path / "home").exists()  # no SuperLink was started


def test_validate_returns_a_frozen_typed_config_that_round_trips_its_keys():
    import dataclasses

    from settings.config import RunConfig

    cfg = validate({"lora.r": 8, "train.learning-rate": 1e-3, "num-server-rounds": 5})
    assert isinstance(cfg, RunConfig)
    assert (cfg.lora.r, cfg.train.learning_rate, cfg.num_server_rounds) == (8, 1e-3, 5)
    assert cfg.as_dict()["lora.r"] == 8 and cfg.as_dict()["num-server-rounds"] == 5
    assert set(cfg.as_dict()) == set(KEYS)
    assert validate(cfg.as_dict()) == cfg  # the dotted keys give the same config back
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lora.r = 4  # type: ignore[misc]


def test_each_strategy_declares_its_own_keys_as_fields_of_the_strategy_section():
    from dataclasses import fields

    from settings.config import StrategySection
    from strategies.registry import STRATEGIES, settings_keys

    section = {f.name: f.type for f in fields(StrategySection)}
    declared = {name: settings_keys(cls) for name, cls in STRATEGIES.items()}
    assert declared["fedmedlora-plus"] == ("temperature", "size_weighted", "validation", "validation_instances")
    assert declared["krum"] == ("krum_byzantine",) and declared["fedmedlora"] == ()
    for name, cls in STRATEGIES.items():
        if getattr(cls, "Settings", None) is None:
            continue
        for f in fields(cls.Settings):
            assert f.name in section, f"{name}: Settings.{f.name} is not a strategy.* key"
            assert f.type == section[f.name], f"{name}: Settings.{f.name} is {f.type}, the key is {section[f.name]}"
