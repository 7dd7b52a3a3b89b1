"""The `compress` flow and the `embedlake compress` subcommand.

    embedlake compress --from blogcatalog/deepwalk --codec int8 --codec pq [--lake ./lake]

Builds compressed tables from one committed embeddings run (`--from dataset/method[/run]`,
latest by default). Each codec is committed as its own run, method `<method>.<codec>`, all sharing
one run id; each codec's codes are the Delta table tables/<dataset>/<method>.<codec>/ (its codebooks:
codebooks/<dataset>/<method>.<codec>/). A codec that fails leaves nothing behind; codecs committed
before it stay committed.

`compress_run` is the same stage callable from inside another flow (embed_graph's compress step,
when `compress.codecs` is set).
"""
from __future__ import annotations

import json
import sys

from prefect import flow

from embedlake.config import CompressConfig, PipelineConfig, check_table_fits
from embedlake.errors import ConfigError
from embedlake.flows.embed_kg import KG_CODECS_REFUSED
from embedlake.lake import Lake
from embedlake.tasks import compress as ct
from embedlake.tasks.graph import row_bounds
from embedlake.tasks.run import Run
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs


def compress_run(cfg: PipelineConfig, run: Run, source: str = "latest", skip_committed: bool = False) -> dict:
    """Build, measure and commit every codec of cfg.compress.codecs from the committed run `source`
    of run.dataset/run.method; each codec is a run of its own (`run.sibling`) with run's id and clock.
    skip_committed: tables of this run id committed already are kept (a killed run's re-run)."""
    cc = cfg.compress
    codecs = [cz.check_codec(c) for c in dict.fromkeys(cc.codecs)]
    if not codecs:
        raise ValueError("no codecs to build: set compress.codecs (or --codec)")
    src = run.time("load_source", ct.load_source, run.lake, run.dataset, run.method, source, run.retries)
    if src.is_kg:
        refused = [c for c in codecs if c in KG_CODECS_REFUSED]
        if refused:
            raise ConfigError(f"compress.codecs={refused}: these tables are trained by skip-gram on a graph's walks; "
                              f"a knowledge graph's entity table takes fp16, int8, int4, binary, pq, opq, lowrank")
    for c in codecs:         # parameter errors (pq_m not dividing d...) before any work
        check_table_fits(c, _params(c, cc, src), src.rows, src.dim)
    base = run.time("baseline", ct.baseline, src, cfg.eval) if cc.evaluate else None
    bounds = row_bounds(src.rows, cfg.shard)
    tables: dict[str, dict] = {}
    for codec in codecs:
        table = run.sibling(table_method(run.method, codec),
                            writes=(cs.codec_dir(run.dataset, run.method, run.run_id, codec),))
        if skip_committed and table.is_committed():     # re-run of a killed embed_graph run
            tables[codec] = committed_table(table)
        else:
            tables[codec] = build_codec(table, src, codec, _params(codec, cc, src), base, bounds)
    return {"dataset": run.dataset, "source": {"method": run.method, "run_id": src.run_id}, "run_id": run.run_id,
            "lake": run.lake.uri, "rows": src.rows, "dim": src.dim, "tables": tables}


def committed_table(table: Run) -> dict:
    """The summary line of a table run committed before (kept as it is)."""
    done = table.lake.manifest(table.dataset, table.method, table.run_id)
    return {"method": table.method, "manifest": table.lake.url(done.table),
            "path": done.extra.get("path"), "bytes_per_vector": done.extra.get("bytes_per_vector"),
            "ratio": done.extra.get("ratio"), "build_s": 0.0, "reused": True,
            **{k: done.metrics.get(k) for k in ("recall_at_10", "recall_at_10_rerank", "micro_f1_change",
                                                "decode_s")}}


def build_codec(table: Run, src, codec: str, params: dict, base: dict | None, bounds: list) -> dict:
    """Build, measure and commit one codec's table run; a failure leaves nothing of it behind."""
    cc = table.config.compress
    run_id = table.run_id
    # a second writer of this table run stops here; a killed run's re-run takes over its claim
    with table:
        built = table.time(f"build_{codec}", ct.build_table, table.lake, src, codec, params, run_id, bounds,
                           table.retries)
        bpv = cz.bytes_per_vector(codec, params, src.dim)
        fields = table.manifest({cs.CODE_KIND: built["files"], cs.CODEBOOK_KIND: built["codebooks"]}, stages={},
                                extra=codec_extra(table, src, codec, params, bpv, built))
        if cc.evaluate:
            fields["metrics"] = table.time(f"measure_{codec}", ct.measure_table, table.lake, src, fields,
                                           table.config.eval, base, cc)
            if base:
                fields["metrics"]["baseline_node_classification"] = base
            if src.is_kg:        # a KG entity table: its filtered MRR / Hits before and after
                fields["metrics"].update(table.time(f"measure_kg_{codec}", ct.measure_kg_table, table.lake, src,
                                                    fields, table.retries))
        fields["stages"] = {k: v for k, v in table.stages.items() if k.endswith(f"_{codec}")}
        url = table.commit(fields, stage=f"commit_{codec}")
    m = fields["metrics"]
    return {"method": table.method, "manifest": url, "path": fields["extra"]["path"], "bytes_per_vector": bpv,
            "ratio": fields["extra"]["ratio"], "build_s": built["build_wall_s"],
            "recall_at_10": m.get("recall_at_10"), "recall_at_10_rerank": m.get("recall_at_10_rerank"),
            "micro_f1_change": m.get("micro_f1_change"), "decode_s": m.get("decode_s"),
            **{k: v for k, v in m.items() if k.startswith("kg_")}}


def codec_extra(table: Run, src, codec: str, params: dict, bpv: int, built: dict) -> dict:
    """The manifest's extra of one compressed table."""
    return {"kind": "tables", "codec": codec, "params": params, "dim": src.dim, "rows": src.rows,
            "bytes_per_vector": bpv, "ratio": round(4.0 * src.dim / bpv, 4), "stored_bytes": built["stored_bytes"],
            "path": table.lake.url(cs.codec_dir(table.dataset, src.method, table.run_id, codec)),
            "source": {"dataset": table.dataset, "method": src.method, "run_id": src.run_id},
            "graph": src.graph, "build": {k: built[k] for k in ("fit_s", "encode_s", "build_wall_s")}}


def _params(codec: str, cc: CompressConfig, src) -> dict:
    p = cz.codec_params(codec, cc)
    if src.is_kg and "normalize" in p:
        p["normalize"] = False       # a KG model scores with the rows' norms: pq/opq must keep them
    if codec == "hash":
        p["rows"] = src.rows
        p["buckets"] = p["buckets"] or max(1, src.rows // 8)
    if codec in cz.COMPOSED:
        p = cz.plan_composed(codec, p, src.rows, src.dim)
    return p


def table_method(method: str, codec: str) -> str:
    return cs.table_method(method, codec)


@flow(name="compress", validate_parameters=True)
def compress(config: PipelineConfig | None = None, source: str = "", run_id: str | None = None) -> dict:
    """Compressed tables from a committed run `source` = 'dataset/method[/run]'. Returns the summary."""
    cfg = config or PipelineConfig()
    dataset, method, run = cs.parse_source(source)
    tables = Run.open(cfg, dataset, method, run_id=run_id)     # their id and clock; each codec claims its own
    out = compress_run(cfg, tables, run)
    out["stages"] = tables.stages
    out["wall_s"] = tables.wall_s()
    return out


# ---------------------------------------------------------------- CLI

def add_parsers(sub, common) -> None:
    p = sub.add_parser("compress", help="Build compressed tables (fp16, int8, int4, binary, pq, opq, lowrank) "
                       "from a committed embeddings run.",
                       description="Build compressed tables from a committed run and commit each codec as its "
                       "own run (method <method>.<codec>), with bytes per vector, ratio, recall@10 and the "
                       "node-classification F1 change in its manifest.")
    p.add_argument("--from", dest="source", required=True, metavar="DATASET/METHOD[/RUN]",
                   help="Source run in the lake, e.g. blogcatalog/deepwalk (latest committed run) or "
                   "blogcatalog/deepwalk/<run_id>.")
    p.add_argument("--codec", dest="codecs", action="append", default=[], metavar="CODEC",
                   help=f"Codec to build, repeatable or comma-separated: {', '.join(cz.CODECS)} "
                   "(default: compress.codecs, else int8).")
    p.add_argument("--run-id", default=None, help="Run id of the tables (default: generated, time-ordered).")
    common(p)
    p.set_defaults(func=cmd_compress)


def cmd_compress(args) -> int:
    from embedlake.flows.cli_config import pipeline_config
    cfg = pipeline_config(args)
    codecs = [c.strip() for arg in args.codecs for c in arg.split(",") if c.strip()]
    if codecs:
        for c in codecs:
            try:
                cz.check_codec(c)
            except ValueError as e:
                from embedlake.errors import ConfigError
                raise ConfigError(str(e)) from None
        cfg.compress.codecs = codecs
    elif not cfg.compress.codecs:
        cfg.compress.codecs = ["int8"]
    try:
        cs.parse_source(args.source)
    except Exception as e:  # noqa: BLE001 - LakeError / ValueError: a user error either way
        from embedlake.errors import ConfigError
        raise ConfigError(str(e)) from None
    summary = compress(cfg, args.source, args.run_id)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 0


def print_summary(s: dict, out=None) -> None:
    w = (out or sys.stdout).write     # resolved per call: a default bound at import outlives a redirected stdout
    w(f"\nembedlake compress {s['run_id']}  dataset={s['dataset']}  source={s['source']['method']}/"
      f"{s['source']['run_id']}  rows={s['rows']:,}  dim={s['dim']}\n")
    w(f"{'codec':<9}{'B/vec':>7}{'ratio':>8}{'recall@10':>12}{'dMicroF1':>10}{'build':>9}  manifest method\n")
    for codec, t in s["tables"].items():
        rec = "-" if t["recall_at_10"] is None else f"{t['recall_at_10']:.3f}"
        if t.get("recall_at_10_rerank") is not None:
            rec += f"/{t['recall_at_10_rerank']:.3f}"
        f1 = t.get("micro_f1_change")
        df1 = "-" if not f1 else f"{max(f1.values(), key=abs):+.4f}"
        w(f"{codec:<9}{t['bytes_per_vector']:>7}{t['ratio']:>8.2f}{rec:>12}{df1:>10}{t['build_s']:>8.2f}s  {t['method']}\n")
    w("(recall@10 of binary: Hamming / re-scored with int8; dMicroF1: largest change over the label ratios)\n")
    for codec, t in s["tables"].items():
        if t.get("kg_mrr") is not None:      # a KG entity table: filtered test figures, float32 -> codec
            w(f"{codec:<9}filtered MRR {t.get('kg_mrr_before', float('nan')):.4f} -> {t['kg_mrr']:.4f}, Hits@10 "
              f"{t.get('kg_hits@10_before', float('nan')):.4f} -> {t['kg_hits@10']:.4f}\n")
    w("read it:\n")
    first = next(iter(s["tables"]))
    w(f"  python -c \"from embedlake.workers.compress.store import read_compressed; "
      f"t = read_compressed('{s['lake']}', '{s['dataset']}', '{s['source']['method']}', '{first}'); "
      f"print(t.decode().shape, t.search(t.decode()[:1], k=10)[0])\"\n")
    for codec, t in s["tables"].items():
        w(f"  {codec:<8} {t['path']}/partition=*/*.parquet\n")
