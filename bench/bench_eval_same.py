"""Issue 22: the evaluation's CPU seconds per component for several versions of the evaluate
workers, in ONE process on the same tables, alternating versions (the load of a shared machine
then falls on all of them alike). Each version is a checkout's workers/evaluate folder: its
geometry.py and classify.py are loaded as standalone modules (they import only numpy, scipy and
numba), so no second virtual environment is needed.

    .venv/bin/python bench/bench_eval_same.py --versions before=/tmp/eval-before,main=/work/main,after=. \\
        --lake LAKE --cases blogcatalog,github [--rounds 3]

LAKE is a lake this checkout can read with each case's latest table (e.g. the after lake of
bench/bench_eval_cost.py). Per case and version: the minimum over the rounds of the CPU seconds of
reconstruction (500 queries, eval defaults) and of node classification (3 ratios x 3 repeats,
warm-started chains where the version has them), with the figures, so equal figures can be checked.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def load_version(name: str, checkout: str):
    """(geometry, classify) modules of a checkout's workers/evaluate, loaded standalone."""
    mods = []
    for part in ("geometry", "classify"):
        path = Path(checkout).resolve() / "workers" / "evaluate" / f"{part}.py"
        spec = importlib.util.spec_from_file_location(f"eval_{name}_{part}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod              # dataclasses look their module up
        spec.loader.exec_module(mod)
        mods.append(mod)
    return tuple(mods)


def reconstruction(geo, X, g, cfg) -> tuple[float, dict]:
    c0 = time.process_time()
    r = geo.reconstruction_map(X, g.csr.indptr, g.csr.indices, hops=tuple(cfg.reconstruction_hops),
                               sample=cfg.reconstruction_sample, seed=cfg.seed, ball_cap=cfg.reconstruction_ball_cap,
                               relevant_cap=cfg.reconstruction_relevant_cap, threads=1)
    return time.process_time() - c0, r["map"]


def classification(cls, X, labels, cfg) -> tuple[float, dict]:
    c0 = time.process_time()
    r = cls.node_classification(X, labels[0], labels[1], ratios=tuple(cfg.train_ratios), repeats=cfg.repeats,
                                seed=cfg.seed, tol=cfg.classify_tol, max_nodes=cfg.classify_max_nodes or None)
    return time.process_time() - c0, {"micro": r["micro_f1"], "macro": r["macro_f1"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", required=True, help="name=checkout,... (each with workers/evaluate)")
    ap.add_argument("--lake", required=True)
    ap.add_argument("--cases", default="blogcatalog,github")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from bench_eval_cost import case_args, case_table

    from embedlake.config import load_config
    cfg = load_config(None, []).eval
    versions = {k: load_version(k, v) for k, v in (x.split("=") for x in a.versions.split(","))}
    for case in a.cases.split(","):
        X, g, labels = case_table(a.lake, case_args(case, "/tmp", 0))
        best: dict = {}
        for rnd in range(a.rounds + 1):                      # round 0 compiles / warms up, not counted
            for name, (geo, cls) in versions.items():
                rc_s, rc = reconstruction(geo, X, g, cfg)
                nc_s, nc = classification(cls, X, labels, cfg) if labels is not None else (0.0, None)
                if rnd == 0:
                    continue
                b = best.setdefault(name, {"reconstruction_cpu_s": rc_s, "classification_cpu_s": nc_s})
                b["reconstruction_cpu_s"] = round(min(b["reconstruction_cpu_s"], rc_s), 3)
                b["classification_cpu_s"] = round(min(b["classification_cpu_s"], nc_s), 3)
                b["map"], b["f1"] = rc, nc
        print(json.dumps({"case": case, "rows": int(X.shape[0]), "dim": int(X.shape[1]), "versions": best}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
