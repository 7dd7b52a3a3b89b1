"""`embedlake report`: the evaluation tables (and plot) of committed runs, from their manifests.

    embedlake report [--lake L] [DATASET [METHOD [RUN...]]] [--png quality.png] [--json]

No dataset: the latest run of every method of every dataset. DATASET: the latest run of each of its
methods, plus its compressed tables. METHOD: its latest run (or the RUNs named) and its
compressed tables. The markdown is the same as the evaluate stage's Prefect artifact; reading
only needs the lake (no Ray, no Prefect).
"""
from __future__ import annotations

import json
import sys


def add_parsers(sub, common) -> None:
    p = sub.add_parser("report", help="Evaluation tables (markdown) and a plot of committed runs.",
                       description="Render the evaluation figures of committed runs as markdown tables (node "
                       "classification, link prediction, reconstruction, stability, compressed tables). Default: "
                       "the latest run of every method of every dataset in the lake.")
    p.add_argument("dataset", nargs="?", default=None, help="Dataset (default: every dataset in the lake).")
    p.add_argument("method", nargs="?", default=None, help="Method (default: every method of the dataset).")
    p.add_argument("runs", nargs="*", default=[], metavar="RUN", help="Run ids (default: the latest run).")
    p.add_argument("--lake", default="./lake", help="Lake root: local folder or s3://bucket/prefix (default: ./lake).")
    p.add_argument("--png", default=None, metavar="PATH", help="Also write the quality plot (PNG) to this path.")
    p.add_argument("--json", action="store_true", help="Print the runs' metrics as JSON instead of markdown.")
    p.set_defaults(func=cmd_report)


def render(lake: str, dataset: str | None = None, method: str | None = None, runs: list[str] | None = None,
           png: str | None = None) -> tuple[str, list[dict], list[dict]]:
    """(markdown, runs, compressed rows); writes the PNG to `png` when given."""
    from embedlake.workers.evaluate import report as rp
    found, compressed = rp.collect(lake, dataset, method, runs or None)
    title = "evaluation: " + "/".join(x for x in (dataset, method) if x) if dataset else "evaluation"
    md = rp.report_markdown(found, compressed, title=title)
    if png:
        data = rp.quality_plot(found, compressed, title=title)
        with open(png, "wb") as f:
            f.write(data)
    return md, found, compressed


def cmd_report(args) -> int:
    from embedlake.errors import LakeError
    if args.runs and not args.method:
        raise LakeError("name the method before run ids")
    md, found, compressed = render(args.lake, args.dataset, args.method, args.runs, args.png)
    if not found and not compressed:
        what = " of " + "/".join(filter(None, (args.dataset, args.method))) if args.dataset else ""
        raise LakeError(f"no committed runs{what} in {args.lake}")
    if args.json:
        print(json.dumps({"runs": found, "compressed": compressed}, default=str))
    else:
        sys.stdout.write(md)
        if args.png:
            print(f"\nplot: {args.png}")
    return 0
