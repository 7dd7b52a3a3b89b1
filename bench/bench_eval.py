"""Evaluation figures of the embed_graph flow on the shared benchmark graphs (issue 7).

For each dataset x method, two runs through the real flow (Prefect + Ray, default settings):
  A. the full graph: node classification (Micro/Macro-F1 at 10/50/90 %, mean over seeded
     splits) and graph reconstruction (1..3-hop mAP);
  B. eval.link_prediction=true: 10 % of the edges held out BEFORE embedding, ROC-AUC of each
     operator against as many sampled non-edges (best operator shown), MRR / Hits@K.
Prints one markdown table, the flow's own report (workers/evaluate/report.py) and, with --with-peers, the
DeepWalk (PecanPy + gensim) / FastRP (scipy) peers' Micro-F1 from ../shared/bench/peers.py and
the ratio ours / peer.

usage: .venv/bin/python bench/bench_eval.py [--datasets blogcatalog,ppi,cora] [--methods deepwalk,fastrp]
       [--repeats 3] [--png eval.png] [--lake DIR] [--with-peers [--peers DIR]]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_venvs import add_peers_option, peer_python  # noqa: E402  (bench/peer_venvs.py)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)


def run_flow(lake: str, ds: Path, dataset: str, method: str, extra: list[str]) -> dict:
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    ov = [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", f"lake.dataset={dataset}", f"method={method}",
          "eval.align_to_previous=false", "eval.artifacts=false", *extra]
    t0 = time.perf_counter()
    s = embed_graph(load_config(None, ov))
    s["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return s


def peers(ds: Path) -> dict:
    if PEERS_PY is None:
        return {}
    out = subprocess.run([str(PEERS_PY), str(SHARED / "bench" / "peers.py"), str(ds), "--skip", "pq"],
                         capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"peers failed on {ds.name}: {out.stderr[-500:]}", file=sys.stderr)
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="blogcatalog,ppi,cora")
    ap.add_argument("--methods", default="deepwalk,fastrp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lake", default=None, help="Lake folder (default: a temporary one).")
    ap.add_argument("--png", default=None, help="Write the quality plot here.")
    ap.add_argument("--with-peers", action="store_true", help="Also run ../shared/bench/peers.py (minutes per graph).")
    ap.add_argument("--json", default=None, help="Write all figures as JSON here.")
    add_peers_option(ap)
    a = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", a.peers, required=a.with_peers)
    from embedlake.tasks.runtime import configure_env, ensure_ray
    configure_env()
    ensure_ray(num_cpus=os.cpu_count())
    from embedlake.workers.evaluate import report as rp
    lake = a.lake or tempfile.mkdtemp(prefix="bench-eval-")
    rows, runs = [], []
    for name in a.datasets.split(","):
        ds = SHARED / "datasets" / name
        if not ds.exists():
            print(f"skip {name}: {ds} is absent", file=sys.stderr)
            continue
        peer = peers(ds) if a.with_peers else {}
        for method in a.methods.split(","):
            full = run_flow(lake, ds, name, method, [f"input.labels={ds / 'labels.tsv'}",
                                                    f"eval.repeats={a.repeats}"])
            lp = run_flow(lake, ds, f"{name}-lp", method, ["eval.link_prediction=true", "eval.reconstruction=false"])
            m = dict(full["metrics"])
            m["link_prediction"] = lp["metrics"]["link_prediction"]
            runs.append({"dataset": name, "method": method, "run_id": full["run_id"], "metrics": m})
            nc, lpm, rc = m.get("node_classification", {}), m["link_prediction"], m.get("reconstruction", {})
            best = rp.best_operator(lpm)
            peer_f1 = peer.get("deepwalk_f1" if method == "deepwalk" else "fastrp_f1") or {}
            rows.append({"dataset": name, "method": method, "micro": nc.get("micro_f1", {}),
                         "macro": nc.get("macro_f1", {}), "micro_std": nc.get("micro_f1_std", {}),
                         "auc": lpm["roc_auc"], "best": best, "mrr": lpm["mrr"][best],
                         "map": rc.get("map", {}), "map_base": rc.get("random_baseline", {}),
                         "peer_micro": {r: v[0] for r, v in peer_f1.items()},
                         "peer_macro": {r: v[1] for r, v in peer_f1.items()},
                         "wall_full_s": full["bench_wall_s"], "wall_lp_s": lp["bench_wall_s"],
                         "stages_full": {k: v["wall_s"] for k, v in full["stages"].items()}})
            r = rows[-1]
            print(f"{name}/{method}: micro {r['micro']} macro {r['macro']} AUC {best} {r['auc'][best]:.3f} "
                  f"mAP {r['map']} ({r['wall_full_s']}s + {r['wall_lp_s']}s)", file=sys.stderr, flush=True)
    ratios = ["0.1", "0.5", "0.9"]
    print("\n| dataset | method | Micro-F1 10/50/90 % | Macro-F1 10/50/90 % | LP ROC-AUC (best op) | LP AUC "
          "hadamard / dot | LP MRR | mAP 1-hop (random) | mAP 2-hop | eval stage s | run s (full + LP) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mi = " / ".join(f"{r['micro'].get(k, float('nan')):.3f}" for k in ratios)
        ma = " / ".join(f"{r['macro'].get(k, float('nan')):.3f}" for k in ratios)
        print(f"| {r['dataset']} | {r['method']} | {mi} | {ma} | {r['auc'][r['best']]:.3f} ({r['best']}) | "
              f"{r['auc'].get('hadamard', float('nan')):.3f} / {r['auc'].get('dot', float('nan')):.3f} | "
              f"{r['mrr']:.3f} | {r['map'].get('1', float('nan')):.3f} ({r['map_base'].get('1', float('nan')):.4f}) | "
              f"{r['map'].get('2', float('nan')):.3f} | {r['stages_full'].get('evaluate', float('nan')):.1f} | "
              f"{r['wall_full_s']} + {r['wall_lp_s']} |")
    if any(r["peer_micro"] for r in rows):
        print("\n| dataset | method | peer Micro-F1 10/50/90 % | ours / peer at 50 % |")
        print("|---|---|---|---|")
        for r in rows:
            if r["peer_micro"]:
                pm = " / ".join(f"{r['peer_micro'].get(k, float('nan')):.3f}" for k in ratios)
                ratio = r["micro"].get("0.5", float("nan")) / r["peer_micro"].get("0.5", float("nan"))
                print(f"| {r['dataset']} | {r['method']} | {pm} | {ratio:.3f} |")
    print("\n" + rp.report_markdown(runs, title="bench_eval (LP figures from the hold-out runs)"))
    if a.png:
        Path(a.png).write_bytes(rp.quality_plot(runs, title="quality per dataset / method"))
        print(f"plot: {a.png}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"lake: {lake}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
