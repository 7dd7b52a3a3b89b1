"""Prefect tasks of embed_graph's learned-table path (train.table = hash | compose | qr | unified).

For graphs whose full n x d table will not fit (issue 8), the skip-gram engine trains a table of
K << n rows directly on walks of the ingested graph; the full table is never trained, published
or loaded. The stages reuse the compress stage's pieces, so a learned table is stored, read and
decoded exactly like one built by `embedlake compress` from a committed run:

    train_table    one multi-threaded Ray task: codes + K-row table (workers/compress/store.fit_graph_table),
                   on the graph's CSR straight from the object store;
    write_table    one Ray task per row partition writes its rows' codes, then the codebook file
                   (tasks/compress.write_table);
    train_table_sharded, write_table_sharded
                   the same on a graph of S > 1 shards (hash, qr, unified): one walks object per
                   shard (the sharded walk engine), the K-row table passed from shard to shard,
                   each training it on its walks of the round (workers/compress/sharded_table.py);
                   each shard's task writes its own rows' codes; no task holds all walks or the
                   whole graph;
    measure_table  reads the written table back from the lake, materialises only the rows the
                   evaluations need (labelled nodes, link-prediction endpoints) and runs the
                   evaluate stage's node-classification / link-prediction bodies on them.
"""
from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import (LEARNED_TABLE_SHARDS, CompressConfig, EvalConfig, TrainConfig, WalkConfig, WordEvalConfig,
                              check_table_fits)
from embedlake.errors import ConfigError
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.evaluate import LinkSplit, ShardedLinkSplit
from embedlake.tasks.graph import GraphHandle, StageResult
from embedlake.tasks.placement import ref_placements
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.runtime import max_node_cpus
from embedlake.workers.compress import sharded_table as st
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs
from embedlake.workers.evaluate import stages as es
from embedlake.workers.evaluate.links_sharded import split_dict


def table_params(codec: str, compress: CompressConfig, rows: int, dim: int) -> dict:
    """The codec's parameters and layout for a rows x dim graph (as the compress flow plans them),
    checked against that shape (embedlake/config.check_table_fits)."""
    p = cz.codec_params(codec, compress)
    if codec == "hash":
        p["rows"] = rows
        p["buckets"] = p["buckets"] or max(1, rows // 8)
    else:
        p = cz.plan_composed(codec, p, rows, dim)
    check_table_fits(codec, p, rows, dim)
    return p


@task(name="learned_train", cache_policy=NO_CACHE)
def train_table(graph: GraphHandle, codec: str, params: dict, walk: WalkConfig, train: TrainConfig, method: str,
                max_retries: int = 3) -> StageResult:
    """Walks + compositional (or hashed) skip-gram in one multi-threaded Ray task. Returns
    StageResult(ref of the state {"table", "codes"?}, training info)."""
    import ray
    log = stage_logger()
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    progress = Progress(f"train {codec} table", "tokens")
    state_ref, info_ref = remote(cs.fit_graph_table, "train", num_returns=2, num_cpus=cpus,
                                 max_retries=max_retries).remote(
        graph.csr_ref, codec, params, walk, train, method, threads=train.threads or cpus,
        progress=progress.reporter("train"))
    progress.wait([info_ref])
    progress.close()
    info = ray.get(info_ref)
    st = info.get("stats", {})
    log.info(f"train {codec} table: {params.get('table_rows', params.get('buckets')):,} rows for "
             f"{graph.num_nodes:,} nodes, {st.get('tokens', 0):,} tokens at {st.get('tokens_per_s', 0):,.0f} "
             f"tokens/s, loss {st.get('loss_first', float('nan')):.4f} -> {st.get('loss_last', float('nan')):.4f}, "
             f"{info['fit_s']:.2f}s")
    return StageResult(state_ref, info)


@task(name="learned_write", cache_policy=NO_CACHE)
def write_table(lake, *, dataset: str, method: str, run_id: str, graph: GraphHandle, codec: str, params: dict,
                state_ref, bounds: list[tuple[int, int]], max_retries: int = 3) -> dict:
    """Codes of every row partition + the codebook file (no full table exists to pass: X = None)."""
    from embedlake.tasks.compress import write_table as write
    t0 = time.perf_counter()
    out = write(lake, dataset=dataset, method=method, run_id=run_id, codec=codec, params=params, bounds=bounds,
                ids_ref=graph.node_ids_ref, X_ref=None, state_ref=state_ref, max_retries=max_retries)
    stage_logger().info(f"write {codec} table: {len(out['files'])} code partitions + codebook, "
                        f"{out['stored_bytes']:,} bytes, {time.perf_counter() - t0:.2f}s")
    return out


def check_sharded(codec: str, graph: GraphHandle, setting) -> None:
    """compose on S > 1 shards (graph.shards=auto can give them): refused with the reason."""
    if codec not in st.SHARDED_CODECS:
        raise ConfigError(f"{LEARNED_TABLE_SHARDS} (graph.shards={setting} gave {graph.num_shards})")


def whole_split(split, eval_cfg: EvalConfig, max_retries: int = 3):
    """measure_table's split of a sharded graph's hold-out: the per-shard pieces made into the
    one-task split dict by one task (O(test edges), as the link task holds them anyway); a
    LinkSplit or None is returned as it is."""
    if not isinstance(split, ShardedLinkSplit):
        return split
    ref = remote(split_dict, "evaluate", num_cpus=1, max_retries=max_retries).remote(
        eval_cfg.test_edge_share, split.count, len(split.tests), *split.pieces)
    return LinkSplit(ref, split.info)


@task(name="learned_train", cache_policy=NO_CACHE)
def train_table_sharded(graph: GraphHandle, walk_refs: list, codec: str, params: dict, walk: WalkConfig,
                        train: TrainConfig, max_retries: int = 3) -> StageResult:
    """The K-row table of a graph of S > 1 shards: walk_refs holds one walks ref per graph shard
    (k-major, walk.walks_per_node walks from each of its nodes). Each round (one walk number,
    walks_per_node x epochs rounds) the table goes from shard to shard, each non-empty shard's task
    training it on its walks of that round (workers/compress/sharded_table.py); a shard's steps
    run on the node holding its walks (tasks/placement.py), so only the table moves. Tasks take one shard's walks or
    sentences and the K-row tables, never more. Returns StageResult(ref of the state {"table"},
    training info)."""
    import ray
    log = stage_logger()
    S, t0 = graph.num_shards, time.perf_counter()
    if len(walk_refs) != S:
        raise ValueError(f"learned table on shards: {len(walk_refs)} walks objects for {S} graph shards")
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    opts = dict(max_retries=max_retries)
    where = ref_placements(walk_refs)      # a shard's prepare and steps run where its walks are
    live = [(s, sh.hi - sh.lo, remote(st.train_step, "train", num_cpus=cpus, num_returns=2, **opts, **where[s]),
             remote(st.prepare_shard, "train", num_cpus=1, **opts, **where[s]).remote(ref, codec, params))
            for s, (sh, ref) in enumerate(zip(graph.shards, walk_refs)) if sh.hi > sh.lo]
    tables = remote(st.start_tables, "train", num_cpus=1, **opts).remote(codec, params, train)
    rounds, L, stats_refs = walk.walks_per_node * train.epochs, len(live), []
    for r in range(rounds):
        for i, (s, rows, step, p) in enumerate(live):
            tables, stats_ref = step.remote(p, tables, r, r * L + i, rounds * L, rows, walk.walks_per_node, codec,
                                            params, train, s, threads=train.threads or cpus)
            stats_refs.append(stats_ref)
    state_ref = remote(st.final_state, "train", num_cpus=1, **opts).remote(tables)
    stats = gather(stats_refs, f"train {codec} table (round x shard steps)")
    ray.get(state_ref)
    info = {"stats": step_stats(stats, L, rounds), "shards": S, "fit_s": round(time.perf_counter() - t0, 4)}
    if codec in cz.COMPOSED:
        info["codes"] = "qr" if codec == "qr" else "hash"
    got = info["stats"]
    log.info(f"train {codec} table on {S} shards: {rounds} rounds x {L} shard steps, {got['tokens']:,} tokens, "
             f"loss {got['loss_first']:.4f} -> {got['loss_last']:.4f}, {info['fit_s']:.2f}s")
    return StageResult(state_ref, info)


def step_stats(stats: list[dict], shards: int, rounds: int) -> dict:
    """The training stats of the steps (`stats`: round-major, `shards` per round): totals, and the
    pair-weighted loss of the first and the last round."""
    def loss(ss, key):
        got = [(s[key], s["pairs"]) for s in ss if s[key] == s[key]]      # nan: a step with no pairs
        return sum(v * p for v, p in got) / max(1, sum(p for _, p in got)) if got else float("nan")
    tokens, seconds = sum(s["tokens"] for s in stats), sum(s["wall_s"] for s in stats)
    return {"engine": "shard-steps", "rounds": rounds, "shard_steps": shards, "tokens": tokens,
            "pairs": sum(s["pairs"] for s in stats), "seconds": round(seconds, 4),
            "tokens_per_s": tokens / max(seconds, 1e-9), "loss_first": loss(stats[:shards], "loss_first"),
            "loss_last": loss(stats[-shards:], "loss_last")}


@task(name="learned_write", cache_policy=NO_CACHE)
def write_table_sharded(lake, *, dataset: str, method: str, run_id: str, graph: GraphHandle, codec: str,
                        params: dict, state_ref, max_retries: int = 3) -> dict:
    """Each non-empty graph shard's task writes its rows' codes (from the row ids alone, with that
    shard's node ids), numbered as publish_shards numbers a sharded table's parts; then one task
    writes the codebook file (the K-row table) pinned to them."""
    import ray
    t0 = time.perf_counter()
    fn = remote(st.write_shard_codes, "publish", num_cpus=1, max_retries=max_retries)
    live = [sh for sh in graph.shards if sh.hi > sh.lo]
    refs = [fn.remote(lake, dataset=dataset, method=method, run_id=run_id, codec=codec, params=params,
                      partition=i, lo=sh.lo, hi=sh.hi, node_ids=sh.ids_ref) for i, sh in enumerate(live)]
    parts = gather(refs, f"write {codec} codes (shards)")
    files = [{k: p[k] for k in ("path", "rows", "bytes", "sha256")} for p in parts]
    book = ray.get(remote(cs.write_codebooks, "publish", num_cpus=1, max_retries=max_retries).remote(
        lake, dataset, method, run_id, codec, state_ref, files))
    out = {"files": files, "codebooks": [book] if book else [],
           "encode_s": round(sum(p["encode_s"] for p in parts), 4),
           "stored_bytes": sum(f["bytes"] for f in files) + (book["bytes"] if book else 0)}
    stage_logger().info(f"write {codec} table: {len(files)} shard code parts + codebook, {out['stored_bytes']:,} "
                        f"bytes, {time.perf_counter() - t0:.2f}s")
    return out


@task(name="learned_measure", cache_policy=NO_CACHE)
def measure_table(lake, manifest_fields: dict, graph: GraphHandle, split, eval_cfg: EvalConfig,
                  max_retries: int = 3) -> dict:
    """Node classification (labelled graphs) and link prediction (with a holdout split) on vectors
    materialised from the written codes + table, only for the rows they use."""
    import ray
    log = stage_logger()
    if not graph.meta.get("labelled") and split is None:
        log.info("measure: no labels and no link prediction: nothing to measure")
        return {}
    labels_ref = graph.labels_ref if graph.meta.get("labelled") else None
    X_ref, lab_ref, split_ref, info_ref = remote(cs.eval_rows, "evaluate", num_returns=4, num_cpus=1,
                                                 max_retries=max_retries).remote(
        lake, manifest_fields, labels_ref, split.ref if split is not None else None)
    opts = dict(num_cpus=1, max_retries=max_retries)
    jobs = {}
    if labels_ref is not None:
        jobs["node_classification"] = remote(es.classify_stage, "evaluate", **opts).remote(X_ref, lab_ref, eval_cfg)
    lp_refs = [remote(es.link_stage, "evaluate", **opts).remote(X_ref, split_ref, eval_cfg, [op])
               for op in (eval_cfg.lp_operators if split is not None else [])]
    metrics = dict(zip(jobs, ray.get(list(jobs.values()))))
    if lp_refs:
        metrics["link_prediction"] = es.merge_link_results(ray.get(lp_refs))
        metrics["link_prediction"]["holdout"] = split.info
    info = ray.get(info_ref)
    metrics["materialised"] = info
    nc = metrics.get("node_classification")
    codec = manifest_fields["extra"]["codec"]
    if nc:
        log.info(f"measure {codec} table: Micro-F1 " + ", ".join(f"{k}: {v:.3f}" for k, v in nc["micro_f1"].items())
                 + " | Macro-F1 " + ", ".join(f"{k}: {v:.3f}" for k, v in nc["macro_f1"].items())
                 + f" ({info['rows']:,} of {info['of']:,} rows materialised)")
    lp = metrics.get("link_prediction")
    if lp and lp.get("roc_auc"):
        log.info(f"measure {codec} table: link prediction ROC-AUC "
                 + ", ".join(f"{k}: {v:.3f}" for k, v in lp["roc_auc"].items()))
    return metrics


# ------------------------------------------------------------------ vocabularies (embed-corpus)

def corpus_table_params(codec: str, compress: CompressConfig, rows: int, dim: int) -> dict:
    """table_params for a V-word vocabulary; hash's default K is V / compress.compose_ratio too
    (compress.hash_buckets when set), so every codec is sized by the same ratio."""
    if codec == "hash" and not compress.hash_buckets:
        compress = compress.model_copy(update={"hash_buckets": max(1, int(rows // compress.compose_ratio))})
    return table_params(codec, compress, rows, dim)


@task(name="learned_train_words", cache_policy=NO_CACHE)
def train_words_table(vocab, sentences, codec: str, params: dict, train: TrainConfig, max_retries: int = 3
                      ) -> StageResult:
    """Codes + K-row table trained on the tokenised corpus in one multi-threaded Ray task
    (workers/corpus/text.learned_table_stage). Returns StageResult(ref of the state, training info)."""
    import ray

    from embedlake.workers.corpus import text as wc
    log = stage_logger()
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    progress = Progress(f"train {codec} table", "tokens")
    parts = [x for pair in zip(sentences.token_refs, sentences.offset_refs) for x in pair]
    state_ref, info_ref = remote(wc.learned_table_stage, "train", num_returns=2, num_cpus=cpus,
                                 max_retries=max_retries).remote(
        vocab.size, vocab.counts_ref, codec, params, train, *parts, threads=train.threads or cpus,
        progress=progress.reporter("train"))
    try:
        progress.wait([info_ref])
    finally:
        progress.close()
    info = ray.get(info_ref)
    st = info.get("stats", {})
    co = info.get("cooccurrence")
    log.info(f"train {codec} table: {params.get('table_rows', params.get('buckets')):,} rows for "
             f"{vocab.size:,} words" + (f" (co-occurrence graph {co['pairs']:,} pairs)" if co else "")
             + f", {st.get('tokens', 0):,} tokens at {st.get('tokens_per_s', 0):,.0f} tokens/s, loss "
             f"{st.get('loss_first', float('nan')):.4f} -> {st.get('loss_last', float('nan')):.4f}, {info['fit_s']:.2f}s")
    return StageResult(state_ref, info)


@task(name="learned_write_words", cache_policy=NO_CACHE)
def write_words_table(lake, *, dataset: str, method: str, run_id: str, vocab, codec: str, params: dict, state_ref,
                      bounds: list[tuple[int, int]], max_retries: int = 3) -> dict:
    """Codes of every word partition (node column = the token) + the codebook file."""
    from embedlake.tasks.compress import write_table as write
    t0 = time.perf_counter()
    out = write(lake, dataset=dataset, method=method, run_id=run_id, codec=codec, params=params, bounds=bounds,
                ids_ref=vocab.words_ref, X_ref=None, state_ref=state_ref, max_retries=max_retries)
    stage_logger().info(f"write {codec} table: {len(out['files'])} code partitions + codebook, "
                        f"{out['stored_bytes']:,} bytes, {time.perf_counter() - t0:.2f}s")
    return out


@task(name="learned_measure_words", cache_policy=NO_CACHE)
def measure_words_table(lake, manifest_fields: dict, vocab, eval_cfg: WordEvalConfig, max_retries: int = 3
                        ) -> dict:
    """WordSim353 / SimLex-999 / analogies on word vectors decoded from the written table."""
    import ray

    from embedlake.workers.corpus import text as wc
    log = stage_logger()
    m = ray.get(remote(wc.learned_eval_stage, "evaluate", num_cpus=1, max_retries=max_retries).remote(
        lake, manifest_fields, vocab.words_ref, vocab.counts_ref, eval_cfg))
    codec = manifest_fields["extra"]["codec"]
    if not m:
        log.info(f"measure {codec} table: no word benchmarks found (eval.benchmarks), skipped")
        return {}
    parts = [f"{k} rho {m[k]['spearman']:.3f}" for k in ("wordsim353", "simlex999") if k in m]
    if "analogy" in m:
        parts.append(f"analogy {m['analogy']['accuracy']:.1%}")
    log.info(f"measure {codec} table: " + ", ".join(parts) + f" ({m['materialised']['rows']:,} of "
             f"{m['materialised']['of']:,} words materialised)")
    return m
