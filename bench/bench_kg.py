"""Knowledge-graph quality and speed: train a model on a dataset's train split with the CPU kernel,
evaluate filtered MRR / Hits on valid every `--eval-every` epochs and on test at the end.

  NUMBA_NUM_THREADS=1 .venv/bin/python bench/bench_kg.py --data ../shared/datasets/wn18rr --model complex \
      --dim 256 --epochs 30 --negatives 0 --loss softmax --lr 0.1 --reg n3 --reg-weight 0.1

Prints one JSON line per evaluation and a final JSON summary (seconds to reach each figure included).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from embedlake.workers.kg.evaluate import evaluate
from embedlake.workers.kg.kernels import TrainSettings, new_state
from embedlake.workers.kg.models import KGModel, init_tables
from embedlake.workers.kg.partitioned import train_partitioned
from embedlake.workers.kg.train import train
from embedlake.workers.kg.triples import load_triples

from peer_venvs import add_peers_option, peer_python, peer_script  # noqa: E402  (bench/peer_venvs.py)

PYKEEN_NAMES = {"transe": "TransE", "distmult": "DistMult", "complex": "ComplEx", "rotate": "RotatE"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="complex")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--norm", type=int, default=1)
    p.add_argument("--gamma", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=0)
    p.add_argument("--sampling", default="uniform")
    p.add_argument("--loss", default="softmax")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--optimizer", default="adagrad")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--reg", default="n3")
    p.add_argument("--reg-weight", type=float, default=0.0)
    p.add_argument("--init-scale", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=5, help="0: evaluate valid at the end only")
    p.add_argument("--eval-sample", type=int, default=2000, help="valid triples used by the periodic evaluation")
    p.add_argument("--vs-pykeen", action="store_true", help="speed only: one epoch of this kernel, then PyKEEN's "
                   "(../shared/bench/kge_peer.py in the kge peers venv) at the same model, dim and negatives per "
                   "positive, in this run; prints both throughputs and the ratio")
    add_peers_option(p)
    p.add_argument("--partitions", type=int, default=1, help="P > 1: PyTorch-BigGraph's partitioned schedule "
                   "(workers/kg/partitioned.py, in process: the same tables as the Ray run)")
    p.add_argument("--workers", type=int, default=2, help="buckets per round of the partitioned schedule")
    p.add_argument("--lent-rows", type=int, default=0, help="rows each other partition lends a bucket per round "
                   "as read-only negatives (kg.lent_rows; 0: a bucket's negatives come from its own partitions)")
    p.add_argument("--edge-chunks", type=int, default=1, help="parts each bucket is cut into per epoch "
                   "(kg.edge_chunks, PyTorch-BigGraph's num_edge_chunks)")
    p.add_argument("--codecs", default="", help="comma-separated codecs (fp16,int8,int4,binary,pq,opq,lowrank): "
                   "the final test MRR / Hits@10 with the entity table through each codec's round trip (the "
                   "codecs `embedlake compress` writes; compress.* defaults)")
    p.add_argument("--pq-m", type=int, default=20, help="pq / opq sub-quantisers (must divide --dim)")
    p.add_argument("--test-every", type=int, default=0, help="also evaluate the whole test set every N epochs "
                   "(time to reach a figure); 0 = at the end only")
    return p.parse_args()


def speed_vs_pykeen(a: argparse.Namespace) -> None:
    """Positive triples per second of one epoch here and in PyKEEN, same machine, same run. PyKEEN
    draws its negatives per positive; here each positive meets the chunk's shared negatives, so
    `--negatives N` gives every positive N negatives in both."""
    import subprocess
    d = a.data.rstrip("/")
    ts = load_triples(f"{d}/train.txt", f"{d}/valid.txt", f"{d}/test.txt", unseen="keep")
    model = KGModel(a.model, a.dim, a.norm, a.gamma)
    s = TrainSettings(epochs=1, batch=a.batch, negatives=a.negatives, loss=a.loss, optimizer=a.optimizer, lr=a.lr,
                      regularizer=a.reg, reg_weight=a.reg_weight, seed=a.seed)
    warm = TrainSettings(epochs=1, batch=a.batch, negatives=a.negatives, loss=a.loss, optimizer=a.optimizer)
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, a.seed, a.init_scale)
    train(model, new_state(ent.copy(), rel.copy(), a.optimizer), ts.train[:2 * a.batch], warm)   # compile
    t0 = time.perf_counter()
    train(model, new_state(ent, rel, a.optimizer), ts.train, s)
    ours = ts.train.shape[0] / (time.perf_counter() - t0)
    cmd = [str(peer_python("kge", a.peers)), str(peer_script("kge_peer.py")), d, "--model", PYKEEN_NAMES[a.model],
           "--dim", str(a.dim), "--negs", str(a.negatives), "--epochs", "1", "--threads",
           os.environ.get("NUMBA_NUM_THREADS", "1")]
    peer = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print(json.dumps({"model": a.model, "dim": a.dim, "negatives": a.negatives, "batch": a.batch,
                      "threads": os.environ.get("NUMBA_NUM_THREADS", "1"), "ours_triples_per_s": round(ours, 1),
                      "pykeen": peer, "ratio": round(ours / peer["triples_per_s"], 2)}), flush=True)


def main() -> None:
    a = parse_args()
    if a.vs_pykeen:
        speed_vs_pykeen(a)
        return
    d = a.data.rstrip("/")
    ts = load_triples(f"{d}/train.txt", f"{d}/valid.txt", f"{d}/test.txt", unseen="keep")
    model = KGModel(a.model, a.dim, a.norm, a.gamma)
    s = TrainSettings(epochs=a.epochs, batch=a.batch, negatives=a.negatives, negative_sampling=a.sampling,
                      loss=a.loss, margin=a.margin, optimizer=a.optimizer, lr=a.lr, regularizer=a.reg,
                      reg_weight=a.reg_weight, seed=a.seed)
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, a.seed, a.init_scale)
    st = new_state(ent, rel, a.optimizer)
    known = ts.all_known()
    valid = ts.valid[np.random.default_rng(0).permutation(ts.valid.shape[0])[:a.eval_sample]]
    t0 = time.perf_counter()
    train_s = [0.0]

    def on_epoch(state, info):
        train_s[0] += info["seconds"]
        line = {"epoch": info["epoch"], "loss": info["loss"], "epoch_s": info["seconds"],
                "triples_per_s": info["triples_per_s"], "train_s": round(train_s[0], 1)}
        if (a.eval_every and info["epoch"] % a.eval_every == 0) or info["epoch"] == a.epochs:
            m = evaluate(model, state.ent, state.rel, valid, known)
            line.update(valid_mrr=m["mrr"], valid_hits10=m["hits@10"])
        if a.test_every and info["epoch"] % a.test_every == 0 and info["epoch"] != a.epochs:
            m = evaluate(model, state.ent, state.rel, ts.test, known)
            line.update(test_mrr=m["mrr"], test_hits10=m["hits@10"], test_eval_s=m["seconds"])
        print(json.dumps(line), flush=True)

    if a.partitions > 1:
        train_partitioned(model, st, ts.train, s, a.partitions, a.workers, a.seed, on_epoch, a.lent_rows, a.edge_chunks)
    else:
        train(model, st, ts.train, s, ts.degrees(), on_epoch)
    test = evaluate(model, st.ent, st.rel, ts.test, known)
    codecs = codec_figures(a, ts, st) if a.codecs else None
    print(json.dumps({"final": True, "codecs": codecs, "args": vars(a), "threads": os.environ.get("NUMBA_NUM_THREADS"),
                      "train_s": round(train_s[0], 1), "wall_s": round(time.perf_counter() - t0, 1),
                      "test": {k: v for k, v in test.items() if k not in ("tail", "head")},
                      "test_tail_mrr": test["tail"]["mrr"], "test_head_mrr": test["head"]["mrr"]}), flush=True)


def codec_figures(a: argparse.Namespace, ts, st) -> dict:
    """{codec: {mrr, hits@10, bytes_per_vector}} of the trained entity table through each codec."""
    from types import SimpleNamespace

    from embedlake.config import CompressConfig
    from embedlake.workers.kg.stages import codec_metrics
    kg = SimpleNamespace(model=a.model, dim=a.dim, norm=a.norm, gamma=a.gamma, threads=1, eval_batch=1000)
    return codec_metrics(ts, kg, a.codecs.split(","), CompressConfig(pq_m=a.pq_m), (st.ent, st.rel))


if __name__ == "__main__":
    main()
