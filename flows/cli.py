"""The `embedlake` command. Each subcommand resolves one typed config and calls a Prefect flow.

Errors that users can fix (bad input, bad config, lake conflicts) print one line naming the
file / line / field and exit with status 2; nothing is committed to the lake. Run commands check
their inputs first (flows/preflight.py), before Prefect or Ray is imported; an error raised later
inside a Ray task is unwrapped to the same one line. Any other exception prints one line
`error: <Type>: <message>` and exits with status 1. `embedlake --debug ...` prints the tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback

from embedlake.errors import one_line, root_cause, user_error
from embedlake.flows.cli_config import CONFIG_HELP, DEBUG_HELP, add_run_options, pipeline_config
from embedlake.tasks.runtime import configure_env

# Commands defined here: parsing them imports no feature module (their flows import Prefect).
OWN_COMMANDS = ("embed-graph", "walk", "config")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `embedlake` parser. With `command` one of OWN_COMMANDS, only this module's commands are
    added: the feature modules are not imported (so neither is Prefect, before the preflight)."""
    ap = argparse.ArgumentParser(prog="embedlake", description="Graphs and corpora -> embeddings -> a Parquet lake.")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)
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
    if command not in OWN_COMMANDS:
        for name in SUBCOMMAND_MODULES:
            importlib.import_module(name).add_parsers(sub, add_run_options)
    return ap


def command_of(argv: list[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option (global options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _graph_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--edges", default=None, metavar="PATH_OR_URL", help="Edge list: file, folder, glob or s3:// URL "
                   "(TSV/CSV/whitespace/Parquet, .gz/.zst). Default: the generated demo graph.")
    g.add_argument("--labels", default=None, metavar="PATH_OR_URL", help="Node labels (node<TAB>label) for "
                   "node-classification evaluation. Default: none (generated graph: its communities).")
    g.add_argument("--method", default=None, choices=["deepwalk", "node2vec", "fastrp", "orbits"],
                   help="Embedding method (default: deepwalk; same as -p method=...).")
    g.add_argument("--dataset", default=None, help="Dataset name in the lake (default: the input's folder name).")
    g.add_argument("--run-id", default=None, help="Run id (default: generated, time-ordered).")
    add_run_options(g)


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
        if nc.get("micro_f1_ci95"):
            w("  ± 95 %     " + "".join(f"{nc['micro_f1_ci95'][r]:>8.3f}" for r in ratios)
              + f"  (eval.mode=sampled: {int(nc['repeats'])} split(s), bootstrap over test nodes, 0 where "
              "every repeat is scored; eval.mode=exact scores every repeat)\n")
        if nc.get("sampled"):
            w(f"  sampled: {int(nc['num_nodes']):,} of {int(nc['labelled_nodes']):,} labelled nodes "
              "(eval.classify_max_nodes); Micro-F1 std over repeats "
              + ", ".join(f"{nc['micro_f1_std'][r]:.3f}" for r in ratios) + "\n")
    lp = s.get("metrics", {}).get("link_prediction", {}).get("roc_auc")
    if lp:
        w("link prediction ROC-AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in lp.items()) + "\n")
    rc = s.get("metrics", {}).get("reconstruction") or {}
    if rc.get("map"):
        w(reconstruction_line(rc) + "\n")
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
        w(f"outputs:\n  run files   {t['path']}/partition=*/*.parquet (+ its codebooks table)\n")
        w(f"  table       {s['manifest']} (Delta)\n  graph       {s['graph']['path']}\n")
        w(f"read it:\n  python -c \"from embedlake.workers.compress.store import read_compressed; "
          f"t = read_compressed('{s['lake']}', '{s['dataset']}', '{t['source_method']}', '{t['codec']}'); "
          f"print(t.decode().shape)\"\n")
        return
    w("outputs:\n")
    w(f"  embeddings  {s['embeddings']} (Delta table; pl.scan_delta reads the latest run)\n")
    w(f"  graph       {s['graph']['path']}\n")
    w("read it:\n")
    w(f"  python -c \"import embedlake; print(embedlake.read_embeddings('{s['lake']}', '{s['dataset']}', "
      f"'{s['method']}'))\"\n")
    w(f"  polars:  pl.scan_delta('{s['embeddings']}').collect()\n")
    w(f"  duckdb:  ds = deltalake.DeltaTable('{s['embeddings']}').to_pyarrow_dataset(); "
      f"duckdb.sql('SELECT * FROM ds')\n")


def reconstruction_line(rc: dict) -> str:
    """Reconstruction mAP per hop, with its 95 % interval and what was sampled or left out."""
    ci = rc.get("ci95") or {}
    figs = ", ".join(f"{h}-hop {v:.3f}" + (f" ±{ci[h]:.3f}" if ci.get(h) else "") for h, v in rc["map"].items())
    notes = []
    if rc.get("eligible") and rc.get("queries", 0) < rc["eligible"]:
        notes.append(f"{rc['queries']:,} of {rc['eligible']:,} nodes sampled as queries")
    for what in ("sampled", "truncated"):
        hit = {h: c for h, c in (rc.get(what) or {}).items() if c}
        if hit:
            notes.append(f"{what}: " + ", ".join(f"{h}-hop {c:,}" for h, c in hit.items()))
    return f"reconstruction mAP: {figs}" + (f"  ({'; '.join(notes)})" if notes else "")


def cmd_embed_graph(args) -> int:
    cfg = pipeline_config(args)
    from embedlake.flows.embed_graph import embed_graph
    summary = embed_graph(cfg)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_walk(args) -> int:
    cfg = pipeline_config(args)
    from embedlake.flows.walk import walk_graph
    s = walk_graph(cfg)
    if args.json:
        print(json.dumps(s, default=str))
    else:
        print(f"\nembedlake walk run {s['run_id']}  dataset={s['dataset']}  method={s['method']}  "
              f"walks={s['walks']:,}")
        for k, v in s["stages"].items():
            print(f"{k:<12}{v['wall_s']:>9.2f}s")
        print(f"walks     {s['walks_uri']} (Delta table)")
        print(f"read it:  pl.scan_delta('{s['walks_uri']}').collect()")
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


# Feature modules add their own subcommands: each has add_parsers(subparsers, add_run_options)
# and sets `func` on its parsers (func(args) -> exit status).
SUBCOMMAND_MODULES: list[str] = ["embedlake.flows.ops", "embedlake.flows.compress", "embedlake.flows.report", "embedlake.flows.embed_corpus",
                               "embedlake.flows.embed_kg"]


# Commands that run a flow: checked first (flows/preflight.py), their log lines kept to one line each
RUN_COMMANDS = ("embed-graph", "walk", "compress", "embed-corpus", "embed-kg")


def check_before_start(args: argparse.Namespace) -> None:
    """A run command's preflight: what can be checked before its flow, and so Prefect and Ray, is imported."""
    from embedlake.flows import preflight
    if args.cmd in ("embed-graph", "walk"):
        preflight.check_graph_run(pipeline_config(args))
    elif args.cmd == "compress":
        preflight.check_compress_run(pipeline_config(args), args.source)
    elif args.cmd == "embed-corpus":
        from embedlake.flows.embed_corpus import corpus_config
        preflight.check_corpus_run(corpus_config(args))


class OneLineLogs(logging.Filter):
    """Log lines without tracebacks or colour codes (Prefect logs a failed task with its traceback,
    and the failed state with Ray's coloured `ray::task()` header): one line per record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        msg = record.getMessage()
        short = one_line(msg)
        if short != msg:
            record.msg, record.args = short, None
        return True


def report_error(exc: BaseException, debug: bool) -> int:
    """Print an exception as one `error:` line; the exit status: the user error's (2), else 1."""
    if debug:
        traceback.print_exception(exc)
    ue = user_error(exc)
    if ue is not None:
        print(f"error: {one_line(str(ue))}", file=sys.stderr)
        return getattr(ue, "exit_code", 2)
    cause = root_cause(exc)
    hint = "" if debug else " (run with --debug for the traceback)"
    print(f"error: {type(cause).__name__}: {one_line(str(cause))}{hint}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    configure_env()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    # `submit` validates the run it sends with this parser: handed over here, so flows/ops.py
    # needs no import of this module (which imports it)
    args.command_parser = build_parser
    debug = bool(getattr(args, "debug", False))
    quiet = OneLineLogs()
    try:
        if args.cmd in RUN_COMMANDS:
            check_before_start(args)
            if not debug:
                _filter_console(quiet)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was committed", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends here as one line and a status
        return report_error(e, debug)
    finally:
        for h in logging.getLogger().handlers:
            h.removeFilter(quiet)


def _filter_console(quiet: logging.Filter) -> None:
    """Put `quiet` on the root handlers (Prefect's console), after Prefect's logging set-up made them."""
    from prefect.logging.configuration import ensure_logging_setup
    ensure_logging_setup()
    for h in logging.getLogger().handlers:
        h.addFilter(quiet)


if __name__ == "__main__":
    sys.exit(main())
