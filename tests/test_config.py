"""Config loading: YAML + dotted overrides, one-line errors naming the key."""

import pytest

from jigclu.config import RunConfig, load_config, parse_overrides, save_config
from jigclu.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = RunConfig()
    assert cfg.model.grid == 2 and cfg.loss.temperature == 0.3 and cfg.optim.lr == 0.03
    assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4 and cfg.train.epochs == 200
    assert cfg.patch_size == 112
    assert RunConfig(data={"batch_size": 512}).effective_lr() == pytest.approx(0.06)


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=[2, 3]", "d=true", "e=x"]) == \
        {"a": {"b": 1, "c": [2, 3]}, "d": True, "e": "x"}


def test_yaml_plus_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  grid: 3\njigsaw:\n  crop_size: 48\n")
    cfg = load_config(f, ["optim.lr=0.1", "scaling.workers=[1, 3]"])
    assert cfg.model.grid == 3 and cfg.optim.lr == 0.1 and cfg.scaling.workers == (1, 3)
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg


@pytest.mark.parametrize("overrides,needle", [
    (["optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["nosection.x=1"], "unknown key 'nosection'"),
    (["model.grid=1"], "model.grid"),
    (["model.grid=3"], "cannot be split into a 3x3 grid"),
    (["jigsaw.crop_size=6", "model.grid=2"], "jigsaw.crop_size"),
    (["loss.temperature=0"], "loss.temperature"),
    (["loss.w_clu=0", "loss.w_loc=0"], "nothing to train"),
    (["scaling.workers=[3, 1]"], "scaling.workers"),
    (["device=tpu"], "device"),
    (["optim.lr"], "not key=value"),
])
def test_bad_values_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
