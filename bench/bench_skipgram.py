"""SGNS kernels vs gensim, side by side on the SAME DeepWalk walks (issue 4).

BlogCatalog, uniform walks 10 x 80, d=128, window 10, 5 negatives, 1 epoch, 2 threads by default.
gensim runs in the peers venv (../peers-venv beside the checkout) in a subprocess on the walks saved to a temp
file; node classification (DeepWalk protocol, one-vs-rest liblinear LR, top-k labels, 3 seeds)
scores every embedding with the same function from ../shared/bench/peers.py.

usage: python bench/bench_skipgram.py [--dataset blogcatalog] [--threads 2] [--no-torch] [--no-f1]
Prints one JSON object (and a short table on stderr).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_venvs import add_peers_option, peer_python  # noqa: E402  (bench/peer_venvs.py)

import numba as nb
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)

GENSIM_SCRIPT = r"""
import sys, time, json, numpy as np
from gensim.models import Word2Vec
walks_path, out_path, dim, window, neg, threads, n = sys.argv[1:8]
dim, window, neg, threads, n = map(int, (dim, window, neg, threads, n))
W = np.load(walks_path)
walks = [[str(x) for x in row] for row in W]
t0 = time.perf_counter()
m = Word2Vec(vector_size=dim, window=window, min_count=0, sg=1, hs=0, negative=neg, workers=threads,
             epochs=1, seed=0)
m.build_vocab(walks)
t1 = time.perf_counter()
m.train(walks, total_examples=len(walks), epochs=1)
t2 = time.perf_counter()
X = np.zeros((n, dim), np.float32)
for i in range(n):
    k = str(i)
    if k in m.wv.key_to_index:
        X[i] = m.wv[k]
np.save(out_path, X)
print(json.dumps({"vocab_s": t1 - t0, "train_s": t2 - t1, "steps": int(W.size)}))
"""


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", SHARED / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@nb.njit(parallel=True, cache=True)
def _uniform_walks(indptr, indices, walks_per_node, length, seed):
    n = indptr.shape[0] - 1
    out = np.empty((walks_per_node * n, length), np.int32)
    for r in nb.prange(walks_per_node * n):
        np.random.seed(seed * 1000003 + r)
        v = r % n
        out[r, 0] = v
        for t in range(1, length):
            d = indptr[v + 1] - indptr[v]
            if d > 0:
                v = indices[indptr[v] + np.random.randint(0, d)]
            out[r, t] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="blogcatalog")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=80)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--torch-batch", type=int, default=None)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads (default --threads); "
                    "1 avoids OpenMP barrier stalls on a busy machine")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-gensim", action="store_true")
    ap.add_argument("--no-f1", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="an extra numba run with these train_sgns keyword arguments, e.g. "
                         "'pairs={\"ablation\": 16}' (repeatable; scored like the others)")
    add_peers_option(ap)
    a = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", a.peers, required=not a.no_gensim)

    from embedlake.workers.train.skipgram import train_sgns
    peers = load_peers()
    ds = SHARED / "datasets" / a.dataset
    n, e, Y, directed = peers.load(str(ds))
    A = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    if not directed:
        A = A + A.T
    A.sort_indices()
    indptr, indices = A.indptr.astype(np.int64), A.indices.astype(np.int32)
    nb.set_num_threads(min(a.threads, nb.config.NUMBA_NUM_THREADS))
    t0 = time.perf_counter()
    walks = _uniform_walks(indptr, indices, a.walks, a.length, 0)
    walk_s = time.perf_counter() - t0
    tokens = walks.ravel()
    offsets = np.arange(0, tokens.size + 1, a.length, dtype=np.int64)
    res = {"dataset": a.dataset, "nodes": n, "tokens": int(tokens.size), "threads": a.threads,
           "dim": a.dim, "window": a.window, "negatives": a.negatives, "epochs": a.epochs, "walk_s": round(walk_s, 3)}
    embs = {}

    tmp = tempfile.mkdtemp(prefix="bench_sg_")
    if not a.no_gensim:
        wp, op = os.path.join(tmp, "walks.npy"), os.path.join(tmp, "gensim.npy")
        np.save(wp, walks)
        if a.epochs != 1:
            print("note: gensim runs 1 epoch", file=sys.stderr)
        p = subprocess.run([PEERS_PY, "-c", GENSIM_SCRIPT, wp, op, str(a.dim), str(a.window), str(a.negatives),
                            str(a.threads), str(n)], capture_output=True, text=True, check=True)
        g = json.loads(p.stdout.strip().splitlines()[-1])
        res["gensim"] = {"train_s": round(g["train_s"], 3), "vocab_s": round(g["vocab_s"], 3),
                         "tokens_per_s": round(tokens.size / g["train_s"]),
                         "tokens_per_s_incl_vocab": round(tokens.size / (g["train_s"] + g["vocab_s"]))}
        embs["gensim"] = np.load(op)
        print(f"gensim: {res['gensim']}", file=sys.stderr, flush=True)

    kw = dict(dim=a.dim, window=a.window, negatives=a.negatives, epochs=a.epochs, seed=0, threads=a.threads)
    W, _, st = train_sgns(tokens, offsets, n, **kw)
    res["numba"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()}
    embs["numba"] = W
    print(f"numba: {res['numba']}", file=sys.stderr, flush=True)
    if "gensim" in res:
        res["numba_vs_gensim_tokens_per_s"] = round(st["tokens_per_s"] / res["gensim"]["tokens_per_s"], 3)

    for spec in a.variant:
        name, kws = spec.split("=", 1)
        Wv, _, stv = train_sgns(tokens, offsets, n, **{**kw, **json.loads(kws)})     # a variant may set the seed
        res[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stv.items()}
        embs[name] = Wv
        print(f"{name}: {res[name]}", file=sys.stderr, flush=True)

    if not a.no_torch:
        from embedlake.workers.train.torch_engine import train_sgns_torch
        tkw = dict(kw, device="cpu")
        if a.torch_threads:
            tkw["threads"] = a.torch_threads
        if a.torch_batch:
            tkw["batch_size"] = a.torch_batch
        Wt, _, stt = train_sgns_torch(tokens, offsets, n, **tkw)
        res["torch_cpu"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stt.items()}
        embs["torch_cpu"] = Wt
        print(f"torch_cpu: {res['torch_cpu']}", file=sys.stderr, flush=True)

    if not a.no_f1 and Y is not None:
        for name, X in embs.items():
            t0 = time.perf_counter()
            res.setdefault("f1", {})[name] = peers.node_classification(X, Y)
            print(f"f1 {name}: {res['f1'][name]} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        if "gensim" in embs:
            res["micro_f1_delta_vs_gensim"] = {r: round(res["f1"]["numba"][r][0] - res["f1"]["gensim"][r][0], 4)
                                               for r in res["f1"]["numba"]}
            for name in (spec.split("=", 1)[0] for spec in a.variant):
                res[f"micro_f1_delta_{name}_vs_gensim"] = {
                    r: round(res["f1"][name][r][0] - res["f1"]["gensim"][r][0], 4) for r in res["f1"][name]}
        if "torch_cpu" in embs:
            res["micro_f1_delta_torch_vs_numba"] = {
                r: round(res["f1"]["torch_cpu"][r][0] - res["f1"]["numba"][r][0], 4) for r in res["f1"]["numba"]}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
