"""The `embed_corpus` flow and `embedlake embed-corpus`: text -> vocabulary -> token-id shards ->
skip-gram -> rows (token, count, vector) -> word-similarity / analogy evaluation -> commit.

Same commit protocol as embed_graph: data files first (token-id shards, vocabulary, embeddings),
the manifest last with put-if-absent; on any error the run's data files are removed and nothing
is committed. A killed run re-run with the same run id resumes (docs/reliability.md): it reuses the
vocabulary and token-id shards when tokenising had finished, continues training at the epoch after
the last checkpointed one, and skips training when the table was finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from prefect import flow

from embedlake import storage
from embedlake.config import CorpusPipelineConfig
from embedlake.flows.compress import abandon_table_run
from embedlake.flows.run_start import start_run
from embedlake.lake import Lake, check_name, dataset_from_input
from embedlake.tasks import corpus as ct
from embedlake.tasks import graph as gt
from embedlake.tasks.claims import claim_run
from embedlake.tasks.resume import TRAIN_KEYS, RunCheckpoints, corpus_tokens_spec, finished_table
from embedlake.tasks.train import drop_checkpoints
from embedlake.workers.run.checkpoints import fingerprint
from embedlake.workers.run.faults import fault_point
from embedlake.workers.corpus.text import TextSpec, spec_dict


def dataset_name(cfg: CorpusPipelineConfig) -> str:
    """Configured, else from the input: …/brown/brown.txt -> brown, a folder or glob -> its folder."""
    if cfg.lake.dataset:
        return check_name(cfg.lake.dataset, "dataset")
    return dataset_from_input(cfg.input.path, ("corpus", "text", "part", "data", ""), "corpus")


@flow(name="embed_corpus", validate_parameters=True)
def embed_corpus(config: CorpusPipelineConfig | None = None) -> dict:
    """Embed the words of a text corpus and publish them to the lake. Returns the run summary."""
    cfg = config or CorpusPipelineConfig()
    t_start = time.perf_counter()
    dataset = dataset_name(cfg)
    method = cfg.method
    run_id, lake, sw = start_run(cfg)
    if cfg.train.table != "full":
        return _learned_table(cfg, lake, dataset, method, run_id, sw, t_start)
    retries = cfg.ray.max_retries
    spec = TextSpec.from_configs(cfg.text, cfg.input)
    # a second writer of this run id stops here; a killed run's re-run takes over its claim and
    # continues from its checkpoints: vocabulary + token shards, the last trained epoch, the table
    claim = claim_run(lake, dataset, method, run_id, cfg.train.resume, gt.stage_logger())
    ck = RunCheckpoints.of(lake, dataset, method, run_id, cfg.train.model_dump())
    try:
        # the driver's S3 settings travel with the tasks (input and lake may be on different stores)
        env = lake.env or (storage.StorageEnv() if "://" in (cfg.input.path or "") else None)
        shards = sw.run("plan", ct.plan, cfg.input, env)
        tokens_spec = corpus_tokens_spec(cfg.input.model_dump(), shards, ct.input_stamps(shards, env), spec_dict(spec),
                                         cfg.vocab.model_dump())
        state = ct.tokens_checkpoint(ck, tokens_spec)
        if state is not None:
            vocab, sentences = sw.run("load_tokens", ct.load_tokens, lake, state, retries)
        else:
            vocab = sw.run("vocabulary", ct.vocabulary, shards, spec, cfg.vocab, env, retries)
            fault_point("after:vocab")
            sentences = sw.run("encode", ct.encode, lake, dataset, method, run_id, vocab, retries)
            ct.save_tokens(ck, tokens_spec, vocab, sentences)
        fault_point("after:encode")
        reused = {"vocab_reused": state is not None, "token_shards_reused": len(sentences.files) - 1 if state else 0}
        table_spec = {"tokens": fingerprint(tokens_spec), "digest": ct.digest(vocab),
                      **{k: cfg.train.model_dump().get(k) for k in TRAIN_KEYS}}
        done = finished_table(ck, "train", table_spec, gt.stage_logger())
        if done is not None:
            emb_ref, info = done.ref, done.info
        else:
            emb_ref, info = sw.run("train", ct.train, vocab, sentences, cfg.train, retries, ck,
                                   table_spec)
        info.setdefault("resumed", {}).update(reused)
        fault_point("after:train")
        files = {"tokens": sentences.files}
        files["embeddings"] = sw.run("publish", ct.publish, lake, dataset, method, run_id, vocab, emb_ref,
                                     cfg.partitions, retries)
        fault_point("after:publish")
        metrics = sw.run("evaluate", ct.evaluate, vocab, emb_ref, cfg.eval)
        corpus = {**vocab.stats, **sentences.info, "max_sentence_tokens": cfg.text.max_sentence_tokens,
                  "long_lines_policy": cfg.text.long_lines}
        manifest = dict(dataset=dataset, method=method, run_id=run_id, files=files,
                        config=cfg.model_dump(mode="json"), metrics=metrics, stages=sw.stages,
                        extra={"dim": cfg.train.dim, "rows": vocab.size, "corpus": corpus, "train": info,
                               "id_column": "token"})
        manifest_url = sw.run("commit", gt.commit, lake, manifest)
        drop_checkpoints(lake, dataset, method, run_id)
    except BaseException:
        _remove_run_files(lake, dataset, method, run_id)
        lake.release_claim(dataset, method, run_id, claim)
        raise
    return {
        "dataset": dataset, "method": method, "run_id": run_id, "lake": lake.uri,
        "embeddings": lake.url(Lake.run_dir("embeddings", dataset, method, run_id)),
        "tokens": lake.url(Lake.run_dir("tokens", dataset, method, run_id)),
        "manifest": manifest_url, "corpus": corpus, "train": info, "stages": sw.stages, "metrics": metrics,
        "rows": vocab.size, "dim": cfg.train.dim, "wall_s": round(time.perf_counter() - t_start, 3),
    }


def _learned_table(cfg: CorpusPipelineConfig, lake: Lake, dataset: str, method: str, run_id: str, sw,
                   t_start) -> dict:
    """train.table != full (issue 8): plan -> vocabulary -> token-id shards -> codes + a K-row table
    trained on the token stream (K = V / compress.compose_ratio) -> its codes + codebook -> word
    metrics on vectors decoded from them -> ONE committed `<method>.<codec>` table, laid out like
    embed-graph's learned tables (read_compressed reads it). No V x d table is trained, published or
    committed; a failure leaves nothing behind. No checkpoints: a re-run starts again."""
    from embedlake.tasks import learned as lt
    from embedlake.workers.compress import codecs as cz
    from embedlake.workers.compress import store as cs
    from embedlake.workers.graph.stages import partition_bounds
    codec, retries = cfg.train.table, cfg.ray.max_retries
    tm = cs.table_method(method, codec)
    claim = claim_run(lake, dataset, tm, run_id, cfg.train.resume, gt.stage_logger())
    spec = TextSpec.from_configs(cfg.text, cfg.input)
    try:
        env = lake.env or (storage.StorageEnv() if "://" in (cfg.input.path or "") else None)
        shards = sw.run("plan", ct.plan, cfg.input, env)
        vocab = sw.run("vocabulary", ct.vocabulary, shards, spec, cfg.vocab, env, retries)
        sentences = sw.run("encode", ct.encode, lake, dataset, tm, run_id, vocab, retries)
        fault_point("after:encode")
        V, dim = vocab.size, cfg.train.dim
        params = lt.corpus_table_params(codec, cfg.compress, V, dim)
        trained = sw.run(f"train_{codec}", lt.train_words_table, vocab, sentences, codec, params,
                         cfg.train, retries)
        fault_point("after:train")
        built = sw.run(f"write_{codec}", lt.write_words_table, lake, dataset=dataset, method=method, run_id=run_id,
                       vocab=vocab, codec=codec, params=params, state_ref=trained.ref,
                       bounds=partition_bounds(V, cfg.partitions), max_retries=retries)
        fault_point("after:publish")
        bpv = cz.bytes_per_vector(codec, params, dim)
        corpus = {**vocab.stats, **sentences.info, "max_sentence_tokens": cfg.text.max_sentence_tokens,
                  "long_lines_policy": cfg.text.long_lines}
        fields = dict(dataset=dataset, method=tm, run_id=run_id,
                      files={"tokens": sentences.files, cs.CODE_KIND: built["files"],
                             cs.CODEBOOK_KIND: built["codebooks"]},
                      config=cfg.model_dump(mode="json"), metrics={}, stages={},
                      extra={"kind": "tables", "codec": codec, "params": params, "dim": dim, "rows": V,
                             "bytes_per_vector": bpv, "ratio": round(4.0 * dim / bpv, 4),
                             "stored_bytes": built["stored_bytes"],
                             "path": lake.url(cs.codec_dir(dataset, method, run_id, codec)),
                             "source": {"dataset": dataset, "method": method, "run_id": None, "full_table": False},
                             "corpus": corpus, "train": trained.info, "id_column": "node",
                             "build": {"fit_s": trained.info["fit_s"], "encode_s": built["encode_s"]}})
        metrics = sw.run(f"measure_{codec}", lt.measure_words_table, lake, fields, vocab, cfg.eval,
                         retries)
        fields["metrics"] = {"bytes_per_vector": bpv, "ratio": fields["extra"]["ratio"], **metrics}
        fields["stages"] = dict(sw.stages)
        manifest_url = sw.run("commit", gt.commit, lake, fields)
    except BaseException:
        abandon_table_run(lake, dataset, method, tm, run_id, codec, claim,
                          extra_dirs=(Lake.run_dir("tokens", dataset, tm, run_id),))
        raise
    info = {k: v for k, v in trained.info.get("stats", {}).items() if isinstance(v, (int, float, str))}
    return {
        "dataset": dataset, "method": tm, "run_id": run_id, "lake": lake.uri,
        "embeddings": fields["extra"]["path"], "tokens": lake.url(Lake.run_dir("tokens", dataset, tm, run_id)),
        "manifest": manifest_url, "corpus": corpus, "train": info, "stages": sw.stages, "metrics": fields["metrics"],
        "rows": V, "dim": dim, "wall_s": round(time.perf_counter() - t_start, 3),
        "table": {"codec": codec, "source_method": method, "path": fields["extra"]["path"], "bytes_per_vector": bpv,
                  "ratio": fields["extra"]["ratio"], "table_rows": params.get("table_rows", params.get("buckets")),
                  "stored_bytes": built["stored_bytes"]},
    }


def _remove_run_files(lake: Lake, dataset: str, method: str, run_id: str) -> None:
    """A failed run leaves nothing behind (unless it was already committed)."""
    try:
        if not lake.is_committed(dataset, method, run_id):
            for kind in ("embeddings", "tokens"):
                lake.delete(Lake.run_dir(kind, dataset, method, run_id), recursive=True)
            # the tokens checkpoint names the files just removed; trained epochs stay for a re-run,
            # states that record no progress yet (no .npy beside them) go
            ck = Lake.run_dir("checkpoints", dataset, method, run_id)
            lake.delete(f"{ck}/tokens", recursive=True)
            if not any(f.endswith(".npy") for f in lake.list_files(ck)):
                lake.delete(ck, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass


# ------------------------------------------------------------------------------------------- CLI

def add_parsers(sub, common) -> None:
    p = sub.add_parser("embed-corpus", help="Embed the words of a text corpus (skip-gram) and publish them.",
                       description="Tokenise a text corpus (one sentence or document per line; plain, .gz, .zst "
                       "or Parquet with a text column; a file, folder or glob, local or s3://), count the "
                       "vocabulary in parallel, train skip-gram word vectors, evaluate them on WordSim353 / "
                       "SimLex-999 / analogies when the benchmark files are found, and commit rows "
                       "(token, count, vector) to the lake.")
    p.add_argument("--help-config", action=_HelpConfig, help="List every corpus config key (-p section.key=...) "
                   "with its default and help text, then exit.")
    p.add_argument("--input", required=True, metavar="PATH_OR_URL", help="Corpus: file, folder, glob or s3:// URL.")
    p.add_argument("--text-column", default=None, help="Parquet input: the text column (default: text).")
    p.add_argument("--dataset", default=None, help="Dataset name in the lake (default: from the input's name).")
    p.add_argument("--run-id", default=None, help="Run id (default: generated, time-ordered).")
    p.add_argument("--engine", default=None, choices=["numba", "torch"], help="Training engine (default: numba).")
    common(p)
    p.set_defaults(func=cmd_embed_corpus)
    q = sub.add_parser("most-similar", help="Nearest words of a committed corpus run (cosine).")
    q.add_argument("word")
    q.add_argument("--dataset", required=True)
    q.add_argument("--method", default="skipgram")
    q.add_argument("--run", default="latest")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--lake", default="./lake")
    q.set_defaults(func=cmd_most_similar)


class _HelpConfig(argparse.Action):
    """`embed-corpus --help-config`: the CorpusPipelineConfig keys (works without --input, like --help)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kw.get("help"))

    def __call__(self, parser, namespace, values, option_string=None):
        from embedlake.config import describe
        rows = describe(CorpusPipelineConfig)
        width = max(len(k) for k, _, _ in rows)
        for k, d, h in rows:
            print(f"{k:<{width}}  {d:<22} {h}")
        parser.exit(0)


def corpus_config(args) -> CorpusPipelineConfig:
    from embedlake.config import load_config
    ov = list(getattr(args, "overrides", []) or [])
    if getattr(args, "lake", None):
        ov.append(f"lake.uri={json.dumps(args.lake)}")
    for flag, key in (("input", "input.path"), ("text_column", "input.text_column"), ("dataset", "lake.dataset"),
                      ("run_id", "lake.run_id"), ("ray_address", "ray.address"), ("engine", "train.engine")):
        v = getattr(args, flag, None)
        if v is not None:
            ov.append(f"{key}={json.dumps(v)}")
    return load_config(getattr(args, "config", None), ov, model=CorpusPipelineConfig)


def cmd_embed_corpus(args) -> int:
    summary = embed_corpus(corpus_config(args))
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_most_similar(args) -> int:
    from embedlake.reader import most_similar
    try:
        rows = most_similar(args.lake, args.dataset, args.method, args.word, k=args.k, run=args.run)
    except KeyError as e:
        from embedlake.errors import InputError
        raise InputError(f"{e.args[0]} of {args.dataset}/{args.method}") from None
    for w, s in rows:
        print(f"{s:8.4f}  {w}")
    return 0


def print_summary(s: dict, out=None) -> None:
    w = (out or sys.stdout).write     # resolved per call: a default bound at import outlives a redirected stdout
    c = s["corpus"]
    w(f"\nembedlake run {s['run_id']}  dataset={s['dataset']}  method={s['method']}  "
      f"vocabulary={s['rows']:,}  dim={s['dim']}\n")
    w(f"corpus: {c['raw_tokens']:,} tokens, {c['lines']:,} lines ({c['empty_lines']:,} empty skipped), "
      f"{c['shards']} shard(s), {c['empty_files']} empty file(s)\n")
    w(f"        {c['unique_words']:,} distinct words, {c['vocab']:,} with count >= {c['min_count']} "
      f"({c['kept_token_share']:.1%} of tokens); {c['long_lines']:,} lines over {c['max_sentence_tokens']:,} "
      f"tokens split (+{c['extra_sentences']:,} sentences)")
    if c.get("replaced_invalid_utf8"):
        w(f"; {c['replaced_invalid_utf8']:,} invalid UTF-8 sequences replaced")
    w("\n")
    t = s.get("train", {})
    if t:
        w(f"train:  {t.get('tokens', 0):,} tokens at {t.get('tokens_per_s', 0):,.0f} tokens/s ({t.get('engine')})\n")
    w(f"{'stage':<12}{'wall':>10}\n")
    for k, v in s["stages"].items():
        w(f"{k:<12}{v['wall_s']:>9.2f}s\n")
    w(f"{'total':<12}{s['wall_s']:>9.2f}s\n")
    m = s.get("metrics") or {}
    if m:
        w("quality:\n")
        for k, name in (("wordsim353", "WordSim353"), ("simlex999", "SimLex-999")):
            if k in m:
                w(f"  {name:<11} Spearman rho {m[k]['spearman']:.3f}  ({m[k]['evaluated']}/{m[k]['pairs']} pairs, "
                  f"OOV {m[k]['oov_share']:.1%})\n")
        if "analogy" in m:
            a = m["analogy"]
            w(f"  analogies   accuracy {a['accuracy']:.1%}  ({a['evaluated']:,}/{a['questions']:,} questions, "
              f"OOV {a['oov_share']:.1%})\n")
    w("outputs:\n")
    w(f"  embeddings  {s['embeddings']}\n")
    w(f"  tokens      {s['tokens']}\n")
    w(f"  manifest    {s['manifest']}\n")
    w("read it:\n")
    if s.get("table"):          # a learned table (train.table): codes + codebook, decoded on request
        w(f"  python -c \"from embedlake.workers.compress.store import read_compressed as rc; "
          f"print(rc('{s['lake']}', '{s['dataset']}', '{s['table']['source_method']}', "
          f"'{s['table']['codec']}').decode().shape)\"\n")
        return
    w(f"  python -c \"import embedlake.reader as r; print(r.most_similar('{s['lake']}', '{s['dataset']}', "
      f"'{s['method']}', 'money'))\"\n")
    w(f"  polars:  pl.scan_parquet('{s['embeddings']}/**/*.parquet', hive_partitioning=True).collect()\n")
