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
    with pytest.raises(ConfigError, match="ray.stages.walk: unknown option"):    # refused at load, before Ray
        load_config(None, ["ray.stages={walk: {gpus: 1}}"])
    set_stage_options({})


@pytest.mark.parametrize("overrides, needles", [
    (["train.table=compose", "method=fastrp"], ["train.table=compose", "method 'fastrp' has none"]),
    (["train.table=hash", "compress.codecs=[int8]"], ["compress.codecs=['int8']", "train.table=hash never trains"]),
    (["train.table=qr", "train.engine=torch"], ["train.table=qr trains on one worker", "train.engine=numba"]),
    (["train.table=qr", "train.workers=2"], ["train.table=qr trains on one worker", "train.workers=1"]),
    (["train.table=unified", "train.partitions=2"], ["train.table=unified", "train.partitions=0"]),
    (["train.table=compose", "walk.write_walks=true"], ["train.table=compose does not write walks",
                                                        "walk.write_walks=false"]),
    (["train.table=compose", "graph.shards=2"], ["train.table=compose", "whole graph", "graph.shards=1"]),
])
def test_learned_table_rules_refused_at_load(overrides, needles):
    """Cross-field rules of train.table != full live in the config: a bad combination is refused
    when the config is loaded (before Prefect or Ray start), naming the dotted fields."""
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert "Value error" not in str(e.value)
    load_config(None, [overrides[0]])          # the table alone is fine


@pytest.mark.parametrize("table", ["hash", "qr", "unified"])
def test_learned_tables_of_node_id_codes_load_on_shards(table):
    """hash, qr and unified codes are functions of the node id: they train on graph.shards > 1
    (averaged copies, tasks/learned.py); only compose, whose codes need the whole graph, is refused."""
    assert load_config(None, [f"train.table={table}", "graph.shards=4"]).graph.shards == 4


@pytest.mark.parametrize("overrides, needles", [
    (["train.table=qr", "train.engine=torch"], ["train.table=qr", "numba compositional kernel", "train.engine=numba"]),
    (["train.table=compose", "train.workers=3"], ["train.table=compose", "train.workers=1"]),
    (["train.table=hash", "compress.codecs=[pq]"], ["compress.codecs=['pq']", "embed-corpus builds no compressed"]),
])
def test_corpus_learned_table_rules_refused_at_load(overrides, needles):
    from embedlake.config import CorpusPipelineConfig
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, model=CorpusPipelineConfig)
    assert all(n in str(e.value) for n in needles), str(e.value)
    load_config(None, [overrides[0]], model=CorpusPipelineConfig)


@pytest.mark.parametrize("codec, params, rows, dim, needle, fits", [
    ("pq", {"m": 16, "nbits": 8, "train_sample": 100}, 1000, 128,
     "100 training rows are fewer than the 2^8 centroids", {"m": 16, "nbits": 6, "train_sample": 100}),
    ("opq", {"m": 5, "nbits": 4, "train_sample": 0}, 1000, 128, "compress.pq_m=5 does not divide the source "
     "dimension 128", {"m": 8, "nbits": 4, "train_sample": 0}),
    ("hash", {"buckets": 100, "rows": 6}, 6, 16, "compress.hash_buckets=100 exceeds the source's 6 rows",
     {"buckets": 6, "rows": 6}),
    ("compose", {"ratio": 1.5, "table_rows": 40}, 40, 16, "compress.compose_ratio=1.5: a compose table for 40 rows",
     {"ratio": 1.5, "table_rows": 26}),
    ("lowrank", {"rank": 64, "train_sample": 0}, 1000, 32, "compress.lowrank_dim=64 exceeds the source dimension 32",
     {"rank": 32, "train_sample": 0}),
])
def test_codec_parameters_checked_against_the_source_shape(codec, params, rows, dim, needle, fits):
    """The rules that need the data's shape: one function in the config module, named fields."""
    from embedlake.config import check_table_fits
    with pytest.raises(ConfigError, match=needle.replace("^", r"\^")):
        check_table_fits(codec, params, rows, dim)
    check_table_fits(codec, fits, rows, dim)
