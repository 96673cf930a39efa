"""The typed config: experiments, overrides, strict keys and types."""
import pytest
import yaml

from resdepth.config import ConfigError, config_hash, iter_fields, load_config, to_yaml
from resdepth.train.config import Config


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


def test_exponent_without_a_dot_is_a_float():
    """PyYAML reads ``2e-3`` as a string (YAML 1.1); float fields take it, other fields do not."""
    cfg = load_config(Config, ["trainer.lr=2e-3", "diffusion.sigma_data=1E-1", "diffusion.S_churn=+5e0"])
    assert cfg.trainer.lr == 0.002 and cfg.diffusion.sigma_data == 0.1 and cfg.diffusion.S_churn == 5.0
    with pytest.raises(ConfigError, match="trainer.batch_size: value '1e3' is not of the expected type int"):
        load_config(Config, ["trainer.batch_size=1e3"])
    with pytest.raises(ConfigError, match="trainer.lr: value '2e-3x' is not of the expected type float"):
        load_config(Config, ["trainer.lr=2e-3x"])


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


@pytest.mark.parametrize("override, message", [
    ("model.channel_mult=[]", "model.channel_mult: must list one positive multiplier per level, got []"),
    ("model.model_channels=0", "model.model_channels: must be >= 1, got 0"),
    ("trainer.grad_accum=0", "trainer.grad_accum: must be >= 1, got 0"),
    ("run.log_every=0", "run.log_every: must be >= 1, got 0"),
    ("trainer.betas=[0.9]", "trainer.betas: must be two numbers in [0, 1), got [0.9]"),
    ("data.crop=[32]", "data.crop: must be [] or [H, W] with H, W >= 1, got [32]"),
    ("data.crop=[0,32]", "data.crop: must be [] or [H, W] with H, W >= 1, got [0, 32]"),
    ("trainer.lr=-1", "trainer.lr: must be >= 0, got -1.0"),
    ("trainer.max_steps=-1", "trainer.max_steps: must be >= 0, got -1"),
    ("run.dir=''", "run.dir: must name a directory (it is empty)"),
])
def test_value_out_of_range_names_key_and_value(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(Config, ["experiment=baseline_regression", override])
    assert message in str(e.value)


def test_every_range_problem_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(Config, ["model.model_channels=0", "trainer.grad_accum=0", "run.dir=''"])
    assert str(e.value).count("\n  ") == 3


def test_yaml_syntax_error_and_base_cycle_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  dir: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{bad}: line 3, column 1: YAML syntax error"):
        load_config(Config, [f"experiment={bad}"])
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match=r"a.yaml: base: inherits from itself \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        load_config(Config, [f"experiment={tmp_path / 'a.yaml'}"])
