"""Bit-identity check for refactors: embed BlogCatalog with DeepWalk (train.threads=1) and FastRP,
then print the sha256 of each committed table (node ids + vectors, in node order).

    .venv/bin/python bench/bit_identity.py [--lake /tmp/bitid] [--edges ../shared/datasets/blogcatalog/edges.tsv]

Run it before and after a change and compare the printed hashes: any code change that alters a
committed output at a fixed seed changes them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def table_sha256(lake: str, dataset: str, method: str) -> str:
    import embedlake
    ids, X = embedlake.load_matrix(lake, dataset, method, run="latest")
    order = np.argsort(np.asarray(ids), kind="stable")
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(ids)[order]).tobytes())
    h.update(np.ascontiguousarray(X[order]).tobytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", default="/tmp/embedlake-bitid")
    ap.add_argument("--edges", default=str(ROOT.parent / "shared/datasets/blogcatalog/edges.tsv"))
    args = ap.parse_args()
    shutil.rmtree(args.lake, ignore_errors=True)
    exe = str(Path(sys.executable).with_name("embedlake"))
    out = {}
    for method, extra in (("deepwalk", ["-p", "train.threads=1"]), ("fastrp", [])):
        cmd = [exe, "embed-graph", "--edges", args.edges, "--lake", args.lake, "--method", method,
               "--dataset", "bitid", "-p", "eval.repeats=1", *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        out[method] = table_sha256(args.lake, "bitid", method)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
