import pytest

from embedlake.config import PipelineConfig, describe, load_config
from embedlake.errors import ConfigError


def test_defaults_validate_and_every_field_has_help():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    rows = describe()
    assert len(rows) > 40
    assert all(h for _, _, h in rows), [k for k, _, h in rows if not h]


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  dim: 64\n  window: 3\nwalk:\n  length: 20\n")
    cfg = load_config(f, ["train.dim=32", "eval.train_ratios=[0.2, 0.8]", "lake.uri=s3://b/p"])
    assert cfg.train.dim == 32 and cfg.train.window == 3 and cfg.walk.length == 20
    assert cfg.eval.train_ratios == [0.2, 0.8] and cfg.lake.uri == "s3://b/p"


@pytest.mark.parametrize("override, needle", [
    ("train.dimm=3", "train.dimm: unknown key"),
    ("train.dim=1", "train.dim"),
    ("walk.p=-1", "walk.p"),
    ("eval.train_ratios=[1.5]", "eval.train_ratios"),
    ("method=line", "method"),
    ("nosuch.key=1", "nosuch: unknown key"),
])
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_stage_options_validated_and_applied():
    from embedlake.tasks.remote import set_stage_options, stage_options
    cfg = load_config(None, ["ray.stages={train: {num_gpus: 1, num_cpus: 8}}"])
    set_stage_options(cfg.ray.stages)
    assert stage_options("train") == {"num_gpus": 1, "num_cpus": 8} and stage_options("walk") == {}
    with pytest.raises(ConfigError, match="ray.stages.walk: unknown option"):
        set_stage_options({"walk": {"gpus": 1}})
    set_stage_options({})
