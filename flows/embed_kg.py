"""The `embed_kg` flow and `embedlake embed-kg`: triples -> dense ids -> train a knowledge-graph
model (TransE, DistMult, ComplEx or RotatE) -> entity and relation tables -> filtered MRR / Hits ->
commit (docs/knowledge-graphs.md).

Same commit protocol as embed_graph (tasks/run.py's Run): the run is claimed, the two tables are
written, the manifest (metrics in it) is committed last; a failure removes the run's files. Every
training epoch is checkpointed, so a killed run re-run with the same run id continues after its last
finished epoch, and reuses the finished tables when training had finished.
"""
from __future__ import annotations

import json

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.errors import ConfigError
from embedlake.lake import Lake, check_name, dataset_from_input
from embedlake.tasks import kg as kt
from embedlake.tasks.run import Run
from embedlake.workers.kg.stages import TABLE_SUBS, model_of, table_method
from embedlake.workers.run.faults import fault_point


KG_CODECS_REFUSED = ("hash", "compose", "qr", "unified")


def dataset_name(cfg: PipelineConfig) -> str:
    """Configured, else from the training input: …/fb15k-237/train.txt -> fb15k-237."""
    if cfg.lake.dataset:
        return check_name(cfg.lake.dataset, "dataset")
    return dataset_from_input(cfg.kg.train, ("train", "triples", "kg", "edges", ""), "kg")


def check_kg(cfg: PipelineConfig) -> None:
    """What the config alone can refuse, as one line naming the field."""
    if not cfg.kg.train:
        raise ConfigError("kg.train: no training triples given (--train PATH or -p kg.train=PATH)")
    try:
        model_of(cfg.kg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    learned = [c for c in cfg.compress.codecs if c in KG_CODECS_REFUSED]
    if learned:
        raise ConfigError(f"compress.codecs={learned}: these tables are trained by skip-gram on walks; embed-kg "
                          f"measures the round trip of fp16, int8, int4, binary, pq, opq, lowrank")
    if cfg.kg.partitions > 1 and (cfg.kg.engine != "numba" or cfg.kg.negative_sampling != "uniform"):
        raise ConfigError("kg.partitions > 1 trains with the numba engine and uniform negatives: set kg.engine=numba "
                          "and kg.negative_sampling=uniform (or kg.partitions=1)")


@flow(name="embed_kg", validate_parameters=True)
def embed_kg(config: PipelineConfig | None = None) -> dict:
    """Embed one knowledge graph and publish its entity and relation tables. Returns the run summary."""
    cfg = config or PipelineConfig()
    check_kg(cfg)
    dataset, kg = dataset_name(cfg), cfg.kg
    with Run.open(cfg, dataset, f"kg-{kg.model}") as run:
        ts_ref, triples = run.time("read", kt.read, run.lake, kg, run.retries)
        stage = run.stage("kg_train", {"triples": triples["digest"], "train": kt.train_spec(kg)})
        trainer = kt.train_partitioned if kg.partitions > 1 else kt.train
        tables_ref, info = run.time("train", trainer, ts_ref, kg, stage, run.retries)
        fault_point("after:train")
        files = run.time("publish", kt.publish, run.lake, dataset, run.method, run.run_id, ts_ref, tables_ref,
                         run.retries)
        fault_point("after:publish")
        metrics = run.time("evaluate", kt.evaluate, ts_ref, kg, tables_ref, cfg.compress, run.retries)
        url = run.commit(run.manifest(files, metrics, extra={
            "dim": kg.dim, "rows": triples["entities"], "kg": triples, "train": info, "id_column": "entity"}))
    tables = {which: run.lake.url(Lake.table_dir("embeddings", dataset, table_method(run.method, which)))
              for which in TABLE_SUBS}
    return {
        "dataset": dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
        "entities": tables["entities"], "relations": tables["relations"],
        "manifest": url, "triples": triples, "train": {k: v for k, v in info.items() if k != "history"},
        "stages": run.stages, "metrics": metrics, "rows": triples["entities"], "dim": kg.dim, "wall_s": run.wall_s(),
    }


# ------------------------------------------------------------------------------------------- CLI
def add_parsers(sub, common) -> None:
    p = sub.add_parser("embed-kg", help="Embed a knowledge graph (TransE, DistMult, ComplEx, RotatE) and publish it.",
                       description="Read (head, relation, tail) triples with string ids (TSV/CSV/Parquet, local or "
                       "s3://), train a knowledge-graph model with chunked shared negatives, rank every test "
                       "triple's head and tail against all entities (filtered MRR, Hits@1/3/10) and commit the "
                       "entity and relation tables to the lake. Settings: the kg.* keys of `embedlake config`.")
    p.add_argument("--train", required=True, metavar="PATH_OR_URL", help="Training triples.")
    p.add_argument("--valid", default=None, metavar="PATH_OR_URL", help="Validation triples (with --test).")
    p.add_argument("--test", default=None, metavar="PATH_OR_URL", help="Test triples (default: a seeded split).")
    p.add_argument("--model", default=None, choices=["transe", "distmult", "complex", "rotate"],
                   help="Scoring model (default: complex; same as -p kg.model=...).")
    p.add_argument("--dataset", default=None, help="Dataset name in the lake (default: the input's folder name).")
    p.add_argument("--run-id", default=None, help="Run id (default: generated, time-ordered).")
    common(p)
    p.set_defaults(func=cmd_embed_kg)


def kg_config(args) -> PipelineConfig:
    """The run's config: the common options, then --train/--valid/--test/--model as kg.* overrides."""
    from embedlake.flows.cli_config import pipeline_config
    extra = [f"kg.{flag}={json.dumps(getattr(args, flag))}" for flag in ("train", "valid", "test", "model")
             if getattr(args, flag, None) is not None]
    args.overrides = list(args.overrides) + extra
    return pipeline_config(args)


def cmd_embed_kg(args) -> int:
    cfg = kg_config(args)
    summary = embed_kg(cfg)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    m, t = summary["metrics"], summary["triples"]
    print(f"\nembedlake embed-kg run {summary['run_id']}  dataset={summary['dataset']}  method={summary['method']}  "
          f"dim={summary['dim']}")
    print(f"triples   {t['train']:,} train / {t['valid']:,} valid / {t['test']:,} test, {t['entities']:,} entities, "
          f"{t['relations']:,} relations")
    print(f"filtered  MRR {m['mrr']:.4f}  Hits@1 {m['hits@1']:.4f}  Hits@3 {m['hits@3']:.4f}  "
          f"Hits@10 {m['hits@10']:.4f}")
    for k, v in summary["stages"].items():
        print(f"{k:<12}{v['wall_s']:>9.2f}s")
    print(f"entities  {summary['entities']}\nrelations {summary['relations']}\nmanifest  {summary['manifest']}")
    return 0
