"""The `embedlake` command. Each subcommand resolves one typed config and calls a Prefect flow.

Errors that users can fix (bad input, bad config, lake conflicts) print one line naming the
file / line / field and exit with status 2; nothing is committed to the lake.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from embedlake.tasks.runtime import configure_env

CONFIG_HELP = ("Config overrides as section.key=value (YAML values), repeatable, e.g. -p train.dim=64 "
               "-p walk.walks_per_node=5. `embedlake config` lists every key with its default and help.")


def _common(p: argparse.ArgumentParser) -> None:
    """Options every run command shares: --lake, --config, -p, --ray-address, --json."""
    p.add_argument("--lake", default=None, help="Lake root: local folder or s3://bucket/prefix (default: ./lake).")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML config file (sections as in "
                   "`embedlake config`). Default: none (built-in defaults).")
    p.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=CONFIG_HELP)
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray).")
    p.add_argument("--json", action="store_true", help="Print the run summary as JSON instead of a table.")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="embedlake", description="Graphs and corpora -> embeddings -> a Parquet lake.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("embed-graph", help="Embed a graph (DeepWalk, node2vec or FastRP) and publish it.",
                       description="Embed a graph and publish it to the lake. Without --edges, embeds a generated "
                       "graph with planted communities (deterministic by seed).")
    _graph_args(g)
    g.set_defaults(func=cmd_embed_graph)
    w = sub.add_parser("walk", help="Random walks only (DeepWalk / node2vec), written to the lake as Parquet.",
                       description="Walk a graph and write the walks to the lake (rows: start, k, walk) for "
                       "your own trainer. Committed as method <method>-walks.")
    _graph_args(w)
    w.set_defaults(func=cmd_walk)
    c = sub.add_parser("config", help="List every config key with its default and help text.")
    c.add_argument("--config", default=None, help="Show the resolved values of this YAML file instead.")
    c.add_argument("-p", dest="overrides", action="append", default=[], help=CONFIG_HELP)
    c.set_defaults(func=cmd_config)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub, _common)
    return ap


def _graph_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--edges", default=None, metavar="PATH_OR_URL", help="Edge list: file, folder, glob or s3:// URL "
                   "(TSV/CSV/whitespace/Parquet, .gz/.zst). Default: the generated demo graph.")
    g.add_argument("--labels", default=None, metavar="PATH_OR_URL", help="Node labels (node<TAB>label) for "
                   "node-classification evaluation. Default: none (generated graph: its communities).")
    g.add_argument("--method", default=None, choices=["deepwalk", "node2vec", "fastrp"],
                   help="Embedding method (default: deepwalk; same as -p method=...).")
    g.add_argument("--dataset", default=None, help="Dataset name in the lake (default: the input's folder name).")
    g.add_argument("--run-id", default=None, help="Run id (default: generated, time-ordered).")
    _common(g)


def _pipeline_config(args):
    from embedlake.config import load_config
    ov = list(args.overrides)
    if getattr(args, "lake", None):
        ov.append(f"lake.uri={args.lake}")
    for flag, key in (("edges", "input.edges"), ("labels", "input.labels"), ("method", "method"),
                      ("dataset", "lake.dataset"), ("run_id", "lake.run_id"), ("ray_address", "ray.address")):
        v = getattr(args, flag, None)
        if v is not None:
            ov.append(f"{key}={json.dumps(v)}")
    return load_config(args.config, ov)


def print_summary(s: dict, out=None) -> None:
    w = (out or sys.stdout).write     # resolved per call: a default bound at import outlives a redirected stdout
    w(f"\nembedlake run {s['run_id']}  dataset={s['dataset']}  method={s['method']}  "
      f"rows={s['rows']:,}  dim={s['dim']}\n")
    w(f"{'stage':<12}{'wall':>10}\n")
    for k, v in s["stages"].items():
        w(f"{k:<12}{v['wall_s']:>9.2f}s\n")
    w(f"{'total':<12}{s['wall_s']:>9.2f}s\n")
    nc = s.get("metrics", {}).get("node_classification")
    if nc:
        ratios = list(nc["micro_f1"])
        w("quality (node classification, DeepWalk protocol):\n")
        w("  labelled   " + "".join(f"{float(r):>8.0%}" for r in ratios) + "\n")
        w("  Micro-F1   " + "".join(f"{nc['micro_f1'][r]:>8.3f}" for r in ratios) + "\n")
        w("  Macro-F1   " + "".join(f"{nc['macro_f1'][r]:>8.3f}" for r in ratios) + "\n")
    lp = s.get("metrics", {}).get("link_prediction", {}).get("roc_auc")
    if lp:
        w("link prediction ROC-AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in lp.items()) + "\n")
    rc = s.get("metrics", {}).get("reconstruction", {}).get("map")
    if rc:
        w("reconstruction mAP: " + ", ".join(f"{h}-hop {v:.3f}" for h, v in rc.items()) + "\n")
    st = s.get("metrics", {}).get("stability")
    if st and not st.get("skipped") and "neighbourhood_overlap@10" in st:
        w(f"aligned to run {st['reference_run']}: top-10 neighbour overlap {st['neighbourhood_overlap@10']:.3f}\n")
    for codec, t in ((s.get("tables") or {}).get("tables") or {}).items():
        w(f"table {codec:<8} {t['bytes_per_vector']:>5} B/vector  ratio {t['ratio']:>6.1f}  "
          f"recall@10 {t.get('recall_at_10') or float('nan'):.3f}  -> {t['path']}\n")
    if s.get("table"):          # train.table != full: one learned table, no full table
        t = s["table"]
        w(f"learned table {t['codec']}: {t['table_rows']:,} rows for {s['rows']:,} nodes, "
          f"{t['bytes_per_vector']} B/vector (ratio {t['ratio']:.1f})\n")
        w(f"outputs:\n  table       {t['path']}/partition=*/*.parquet (+ codebooks.parquet)\n")
        w(f"  manifest    {s['manifest']}\n  graph       {s['graph']['path']}\n")
        w(f"read it:\n  python -c \"from embedlake.workers.compress.store import read_compressed; "
          f"t = read_compressed('{s['lake']}', '{s['dataset']}', '{t['source_method']}', '{t['codec']}'); "
          f"print(t.decode().shape)\"\n")
        return
    w("outputs:\n")
    w(f"  embeddings  {s['embeddings']}\n")
    w(f"  manifest    {s['manifest']}\n")
    w(f"  graph       {s['graph']['path']}\n")
    w("read it:\n")
    w(f"  python -c \"import embedlake; print(embedlake.read_embeddings('{s['lake']}', '{s['dataset']}', "
      f"'{s['method']}'))\"\n")
    w(f"  polars:  pl.scan_parquet('{s['embeddings']}/**/*.parquet', hive_partitioning=True).collect()\n")
    w(f"  duckdb:  SELECT * FROM read_parquet('{s['embeddings']}/**/*.parquet', hive_partitioning=true)\n")


def cmd_embed_graph(args) -> int:
    cfg = _pipeline_config(args)
    from embedlake.flows.embed_graph import embed_graph
    summary = embed_graph(cfg)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_walk(args) -> int:
    cfg = _pipeline_config(args)
    from embedlake.flows.walk import walk_graph
    s = walk_graph(cfg)
    if args.json:
        print(json.dumps(s, default=str))
    else:
        print(f"\nembedlake walk run {s['run_id']}  dataset={s['dataset']}  method={s['method']}  "
              f"walks={s['walks']:,}")
        for k, v in s["stages"].items():
            print(f"{k:<12}{v['wall_s']:>9.2f}s")
        print(f"walks     {s['walks_uri']}\nmanifest  {s['manifest']}")
        print(f"read it:  pl.scan_parquet('{s['walks_uri']}/**/*.parquet', hive_partitioning=True).collect()")
    return 0


def cmd_config(args) -> int:
    from embedlake.config import describe, load_config
    if args.config or args.overrides:
        print(load_config(args.config, args.overrides).model_dump_json(indent=2))
        return 0
    rows = describe()
    width = max(len(k) for k, _, _ in rows)
    for k, d, h in rows:
        print(f"{k:<{width}}  {d:<22} {h}")
    return 0


# Feature modules add their own subcommands: each has add_parsers(subparsers, add_common_options)
# and sets `func` on its parsers (func(args) -> exit status).
SUBCOMMAND_MODULES: list[str] = ["embedlake.flows.ops", "embedlake.flows.compress", "embedlake.flows.report", "embedlake.flows.embed_corpus"]


def _user_error(exc: BaseException):
    """The EmbedlakeError behind an exception (Ray wraps task errors), or None."""
    from embedlake.errors import EmbedlakeError
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EmbedlakeError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    configure_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was committed", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        ue = _user_error(e)
        if ue is None:
            raise
        msg = str(ue).strip()
        if "RayTaskError" in msg or "Traceback" in msg:
            msg = msg.strip().splitlines()[-1]
            msg = msg.split(": ", 1)[1] if msg.startswith(("embedlake.", "InputError", "ConfigError")) else msg
        print(f"error: {msg}", file=sys.stderr)
        return getattr(ue, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
