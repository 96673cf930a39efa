"""The typed config: experiments, overrides, strict keys and types."""
import pytest
import yaml

from resdepth.config import ConfigError, config_hash, iter_fields, load_config, to_yaml
from resdepth.config.schema import Config


def test_experiment_and_overrides():
    cfg = load_config(Config, ["experiment=baseline_diffusion", "trainer.max_steps=7",
                               "data.crop=[32,32]", "trainer.lr=1"])
    assert cfg.model.stage == "diffusion"          # from baseline_diffusion.yaml
    assert cfg.model.model_channels == 16          # inherited from baseline_regression.yaml
    assert cfg.trainer.max_steps == 7
    assert cfg.data.crop == [32, 32]
    assert cfg.trainer.lr == 1.0 and isinstance(cfg.trainer.lr, float)
    again = load_config(Config, yaml_overrides(to_yaml(cfg)))
    assert config_hash(again) == config_hash(cfg)
    longer = load_config(Config, ["experiment=baseline_diffusion", "trainer.max_steps=9"])
    assert config_hash(longer) != config_hash(cfg)
    assert config_hash(longer, ignore=("trainer.max_steps",)) == \
        config_hash(load_config(Config, ["experiment=baseline_diffusion"]), ignore=("trainer.max_steps",))


def yaml_overrides(text):
    out = []
    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    walk(yaml.safe_load(text), "")
    return out


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError) as e:
        load_config(Config, ["trainer.max_step=5"])
    msg = str(e.value)
    assert "trainer.max_step: unknown key" in msg
    assert "did you mean trainer.max_steps" in msg


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as e:
        load_config(Config, ["trainer.batch_size=eight", "data.flip=3"])
    msg = str(e.value)
    assert "trainer.batch_size: value 'eight' is not of the expected type int" in msg
    assert "data.flip: value 3 is not of the expected type bool" in msg  # both reported at once


def test_choice_and_unknown_experiment():
    with pytest.raises(ConfigError, match="trainer.backend: value 'horovod'"):
        load_config(Config, ["trainer.backend=horovod"])
    with pytest.raises(ConfigError, match="did you mean baseline_regression"):
        load_config(Config, ["experiment=baseline_regresion"])


def test_every_field_documented():
    fields = list(iter_fields(Config))
    assert len(fields) > 40
    assert all(doc for _, _, _, doc in fields), [k for k, _, _, d in fields if not d]
