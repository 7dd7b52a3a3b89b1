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

from prefect import flow

from embedlake.config import CorpusPipelineConfig
from embedlake.lake import Lake, check_name, dataset_from_input
from embedlake.tasks import corpus as ct
from embedlake.tasks import learned as lt
from embedlake.tasks.run import Run
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs
from embedlake.workers.graph.stages import partition_bounds
from embedlake.workers.run.faults import fault_point


def dataset_name(cfg: CorpusPipelineConfig) -> str:
    """Configured, else from the input: …/brown/brown.txt -> brown, a folder or glob -> its folder."""
    if cfg.lake.dataset:
        return check_name(cfg.lake.dataset, "dataset")
    return dataset_from_input(cfg.input.path, ("corpus", "text", "part", "data", ""), "corpus")


@flow(name="embed_corpus", validate_parameters=True)
def embed_corpus(config: CorpusPipelineConfig | None = None) -> dict:
    """Embed the words of a text corpus and publish them to the lake. Returns the run summary."""
    cfg = config or CorpusPipelineConfig()
    dataset = dataset_name(cfg)
    if cfg.train.table != "full":      # its rules are checked with the config (embedlake/config.py)
        return learned_table(cfg, dataset)
    # a second writer of this run id stops here; a killed run's re-run takes over its claim and
    # continues from its checkpoints: vocabulary + token shards, the last trained epoch, the table
    with Run.open(cfg, dataset, cfg.method) as run:
        # vocab.update: grow the latest committed run's vocabulary and train from its vectors
        previous = ct.previous_run(run, cfg) if cfg.vocab.update else None
        vocab, sentences, reused, tokens_fingerprint = ct.tokenise(run, cfg, previous)
        trained = ct.train_words(run, cfg.train, vocab, sentences, tokens_fingerprint, previous)
        trained.info.setdefault("resumed", {}).update(reused)
        fault_point("after:train")
        files = {"tokens": sentences.files, **trained.files}
        files["embeddings"] = run.time("publish", ct.publish, run.lake, dataset, run.method, run.run_id, vocab,
                                       trained.ref, cfg.partitions, run.retries)
        fault_point("after:publish")
        metrics = run.time("evaluate", ct.evaluate, vocab, trained.ref, cfg.eval)
        corpus = corpus_stats(cfg, vocab, sentences)
        url = run.commit(run.manifest(files, metrics, extra={"dim": cfg.train.dim, "rows": vocab.size,
                                                             "corpus": corpus, "train": trained.info,
                                                             "id_column": "token"}))
    return {
        "dataset": dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
        "embeddings": run.lake.url(Lake.table_dir("embeddings", dataset, run.method)),
        "tokens": run.lake.url(Lake.run_dir("tokens", dataset, run.method, run.run_id)),
        "manifest": url, "corpus": corpus, "train": trained.info, "stages": run.stages, "metrics": metrics,
        "rows": vocab.size, "dim": cfg.train.dim, "wall_s": run.wall_s(),
    }


def corpus_stats(cfg: CorpusPipelineConfig, vocab, sentences) -> dict:
    """The manifest's and summary's corpus figures (an update's: old_vocab, new_words, old_words_seen)."""
    return {**vocab.stats, **sentences.info, "max_sentence_tokens": cfg.text.max_sentence_tokens,
            "long_lines_policy": cfg.text.long_lines, "update": bool(cfg.vocab.update)}


def learned_table(cfg: CorpusPipelineConfig, dataset: str) -> dict:
    """train.table != full (issue 8): plan -> vocabulary -> token-id shards -> codes + a K-row table
    trained on the token stream (K = V / compress.compose_ratio) -> its codes + codebook -> word
    metrics on vectors decoded from them -> ONE committed `<method>.<codec>` table, laid out like
    embed-graph's learned tables (read_compressed reads it). No V x d table is trained, published or
    committed; a failure leaves nothing behind. No checkpoints: a re-run starts again."""
    codec, method = cfg.train.table, cfg.method
    run = Run.open(cfg, dataset, cs.table_method(method, codec), checkpoints=False)
    run.owns(cs.codec_dir(dataset, method, run.run_id, codec))
    with run:
        vocab, sentences, _, _ = ct.tokenise(run, cfg)
        params = lt.corpus_table_params(codec, cfg.compress, vocab.size, cfg.train.dim)
        trained = run.time(f"train_{codec}", lt.train_words_table, vocab, sentences, codec, params, cfg.train,
                           run.retries)
        fault_point("after:train")
        built = run.time(f"write_{codec}", lt.write_words_table, run.lake, dataset=dataset, method=method,
                         run_id=run.run_id, vocab=vocab, codec=codec, params=params, state_ref=trained.ref,
                         bounds=partition_bounds(vocab.size, cfg.partitions), max_retries=run.retries)
        fault_point("after:publish")
        corpus = corpus_stats(cfg, vocab, sentences)
        fields = run.manifest({"tokens": sentences.files, cs.CODE_KIND: built["files"],
                               cs.CODEBOOK_KIND: built["codebooks"]}, stages={},
                              extra=learned_extra(run, method, codec, params, cfg.train.dim, vocab, corpus, trained,
                                                  built))
        metrics = run.time(f"measure_{codec}", lt.measure_words_table, run.lake, fields, vocab, cfg.eval,
                           run.retries)
        fields["metrics"] = {"bytes_per_vector": fields["extra"]["bytes_per_vector"],
                             "ratio": fields["extra"]["ratio"], **metrics}
        fields["stages"] = dict(run.stages)
        url = run.commit(fields)
    return learned_summary(run, method, codec, params, fields, url, corpus, trained, built)


def learned_extra(run: Run, method: str, codec: str, params: dict, dim: int, vocab, corpus: dict, trained,
                  built: dict) -> dict:
    """The manifest's extra of a learned word table (what the compress flow's tables carry)."""
    bpv = cz.bytes_per_vector(codec, params, dim)
    return {"kind": "tables", "codec": codec, "params": params, "dim": dim, "rows": vocab.size,
            "bytes_per_vector": bpv, "ratio": round(4.0 * dim / bpv, 4), "stored_bytes": built["stored_bytes"],
            "path": run.lake.url(cs.codec_dir(run.dataset, method, run.run_id, codec)),
            "source": {"dataset": run.dataset, "method": method, "run_id": None, "full_table": False},
            "corpus": corpus, "train": trained.info, "id_column": "node",
            "build": {"fit_s": trained.info["fit_s"], "encode_s": built["encode_s"]}}


def learned_summary(run: Run, method: str, codec: str, params: dict, fields: dict, url: str, corpus: dict, trained,
                    built: dict) -> dict:
    extra = fields["extra"]
    info = {k: v for k, v in trained.info.get("stats", {}).items() if isinstance(v, (int, float, str))}
    return {
        "dataset": run.dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
        "embeddings": extra["path"], "tokens": run.lake.url(Lake.run_dir("tokens", run.dataset, run.method,
                                                                         run.run_id)),
        "manifest": url, "corpus": corpus, "train": info, "stages": run.stages, "metrics": fields["metrics"],
        "rows": extra["rows"], "dim": extra["dim"], "wall_s": run.wall_s(),
        "table": {"codec": codec, "source_method": method, "path": extra["path"],
                  "bytes_per_vector": extra["bytes_per_vector"], "ratio": extra["ratio"],
                  "table_rows": params.get("table_rows", params.get("buckets")), "stored_bytes": built["stored_bytes"]},
    }


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
    w(f"  polars:  pl.scan_delta('{s['embeddings']}').collect()\n")
