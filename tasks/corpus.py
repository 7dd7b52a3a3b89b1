"""Prefect tasks of the corpus pipeline. Each fans its work out to Ray and returns ObjectRefs or small
dicts: the shard token arrays, the vocabulary and the trained table stay in the object store."""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake import storage
from embedlake.lake import Lake
from embedlake.config import CorpusInputConfig, TrainConfig, VocabConfig, WordEvalConfig
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.graph import StageResult
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote
from embedlake.tasks.run import Run, Stage
from embedlake.tasks.runtime import max_node_cpus
from embedlake.tasks.train import TRAIN_KEYS, ShardedInput, block_partitions, train_streams
from embedlake.errors import ConfigError, LakeError
from embedlake.workers.corpus import text as cs
from embedlake.workers.corpus import update as cu
from embedlake.workers.corpus.text import TextSpec
from embedlake.workers.run.checkpoints import fingerprint, vocab_digest
from embedlake.workers.run.faults import fault_point
from embedlake.workers.train import sharded as sh


@dataclass
class Vocabulary:
    """What later stages need: small stats + ObjectRefs to the words, counts and per-shard arrays."""
    stats: dict
    words_ref: object              # ray.ObjectRef -> list[str] (row i = token id i)
    counts_ref: object             # ray.ObjectRef -> int64[V]
    remap_refs: list               # per shard: local id -> global id
    ids_refs: list                 # per shard: local ids of its tokens
    lens_refs: list                # per shard: sentence lengths

    @property
    def size(self) -> int:
        return int(self.stats["vocab"])


@dataclass
class PreviousRun:
    """The committed run a vocabulary update continues (vocab.update=true): refs of its vocabulary
    and tables, which stay in the object store."""
    run_id: str
    vocab: int
    words_ref: object              # list[str], id order
    counts_ref: object             # int64[V]
    w_in_ref: object               # float32 [V, d], the published table
    w_out_ref: object              # float32 [V, d], the run's saved output vectors


@dataclass
class Sentences:
    files: list[dict]
    token_refs: list
    offset_refs: list
    info: dict = field(default_factory=dict)


@task(name="plan", cache_policy=NO_CACHE)
def plan(input_cfg: CorpusInputConfig, env=None) -> list[dict]:
    """Input files -> shards (byte ranges of whole lines, compressed files, Parquet row groups)."""
    shards = remote(cs.plan_stage, "corpus", num_cpus=1).remote(input_cfg, env)
    import ray
    out = ray.get(shards)
    stage_logger().info(f"plan: {len(out)} shard(s) from {len({s['path'] for s in out})} file(s)")
    return out


@task(name="vocabulary", cache_policy=NO_CACHE)
def vocabulary(shards: list[dict], spec: TextSpec, vocab_cfg: VocabConfig, env=None, max_retries: int = 3,
               previous: PreviousRun | None = None) -> Vocabulary:
    """Tokenise and count every shard in parallel, then merge the counts in one task (with
    `previous`: grow that run's vocabulary, workers/corpus/update.py)."""
    import ray
    log = stage_logger()
    fn = remote(cs.count_stage, "corpus", num_cpus=1, num_returns=4, max_retries=max_retries)
    refs = [fn.remote(s, spec, env) for s in shards]
    stats = gather([r[0] for r in refs], "count (shards)", unit_of=lambda st: float(st["raw_tokens"]),
                   unit="tokens")
    n = len(shards)
    if previous is None:
        merge = remote(cs.merge_stage, "corpus", num_cpus=1, num_returns=3 + n, max_retries=max_retries)
        out = merge.remote(vocab_cfg.min_count, vocab_cfg.max_vocab, stats, *[r[1] for r in refs])
    else:
        merge = remote(cu.update_merge_stage, "corpus", num_cpus=1, num_returns=3 + n, max_retries=max_retries)
        out = merge.remote(previous.words_ref, previous.counts_ref, vocab_cfg.min_count, vocab_cfg.max_vocab, stats,
                           *[r[1] for r in refs])
    summary = ray.get(out[0])
    log.info(f"vocabulary: {summary['raw_tokens']:,} tokens in {summary['sentences']:,} sentences, "
             f"{summary['unique_words']:,} distinct words, {summary['vocab']:,} kept "
             f"(min_count {vocab_cfg.min_count}: {summary['kept_token_share']:.1%} of tokens); "
             f"{summary['empty_lines']:,} empty lines skipped, {summary['long_lines']:,} long lines split "
             f"into +{summary['extra_sentences']:,} sentences, {summary['empty_files']} empty file(s)")
    return Vocabulary(summary, out[1], out[2], list(out[3:]), [r[2] for r in refs], [r[3] for r in refs])


@task(name="encode", cache_policy=NO_CACHE)
def encode(lake, dataset: str, method: str, run_id: str, vocab: Vocabulary, max_retries: int = 3) -> Sentences:
    """Token-id shards (global ids, dropped words removed) written to the lake, kept in the object store."""
    import ray
    fn = remote(cs.encode_stage, "corpus", num_cpus=1, num_returns=3, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, k, vocab.remap_refs[k], vocab.ids_refs[k], vocab.lens_refs[k])
            for k in range(len(vocab.remap_refs))]
    files = gather([r[0] for r in refs], "encode (shards)")
    vocab_file = ray.get(remote(cs.write_vocab_stage, "corpus", num_cpus=1, max_retries=max_retries).remote(
        lake, dataset, method, run_id, vocab.words_ref, vocab.counts_ref))
    sentences = sum(f["rows"] for f in files)
    return Sentences(files + [vocab_file], [r[1] for r in refs], [r[2] for r in refs],
                     {"train_sentences": sentences})


def digest(vocab: Vocabulary) -> str:
    """Content hash of the vocabulary (words + counts), computed where they live (a Ray task):
    part of the fingerprint that lets a killed run's re-run reuse its trained table."""
    import ray
    return ray.get(remote(vocab_digest, "corpus", num_cpus=1).remote(vocab.words_ref, vocab.counts_ref))


def input_stamps(shards: list[dict], env=None) -> list[list]:
    """[path, size, modification stamp] of every input file: part of the tokens' fingerprint, so a
    re-run over changed files tokenises again (local mtime; S3 LastModified / ETag)."""
    out = []
    for path in sorted({s["path"] for s in shards}):
        fs, p = storage.filesystem(path, env)
        info = fs.info(p)
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created") or ""
        out.append([path, int(info.get("size") or 0), str(stamp)])
    return out


def corpus_tokens_spec(input_cfg: dict, shards: list[dict], stamps: list, text_spec: dict, vocab_cfg: dict) -> dict:
    """What determines a corpus run's vocabulary and token-id shards: the input (its shards and each
    file's size and modification stamp), the text settings and the vocabulary settings."""
    keys = ("path", "text_column", "shard_mb")
    return {"input": {k: input_cfg.get(k) for k in keys}, "shards": shards, "stamps": stamps,
            "text": text_spec, "vocab": vocab_cfg}


def reusable_tokens(stage: Stage) -> dict | None:
    """The finished tokens stage of a killed attempt (vocabulary and every token-id shard written,
    each file still there), else None (a stage whose files are gone starts over)."""
    log = stage_logger()
    if stage.final:
        missing = [f["path"] for f in stage.state["files"] if not stage.run.lake.exists(f["path"])]
        if not missing:
            return stage.state
        log.info(f"resume: {len(missing)} token file(s) of run {stage.run.run_id} are gone "
                 f"({missing[0]}...): tokenising again")
        stage.restart()
    elif stage.discarded:
        log.info("resume: the run's tokens checkpoint is of other input or settings: tokenising again")
    return None


def tokenise(run: Run, cfg, previous: PreviousRun | None = None) -> tuple[Vocabulary, Sentences, dict, str]:
    """plan -> vocabulary -> token-id shards (stages plan, vocabulary, encode), or the vocabulary and
    shards a killed attempt finished (stage load_tokens). Returns (vocabulary, sentences, what was
    reused, the tokens' fingerprint). cfg: the CorpusPipelineConfig. previous: the run a vocabulary
    update grows (its id is part of the tokens' spec)."""
    spec = TextSpec.from_configs(cfg.text, cfg.input)
    # the driver's S3 settings travel with the tasks (input and lake may be on different stores)
    env = run.lake.env or (storage.StorageEnv() if "://" in (cfg.input.path or "") else None)
    shards = run.time("plan", plan, cfg.input, env)
    # the fingerprint spec is JSON (stored in the checkpoint state)
    tokens_spec = corpus_tokens_spec(cfg.input.model_dump(), shards, input_stamps(shards, env), cs.spec_dict(spec),
                                     cfg.vocab.model_dump())
    tokens_spec["update_of"] = previous.run_id if previous is not None else None
    stage = run.stage("tokens", tokens_spec)
    state = reusable_tokens(stage)
    if state is not None:
        vocab, sentences = run.time("load_tokens", load_tokens, run.lake, state, run.retries)
    else:
        vocab = run.time("vocabulary", vocabulary, shards, spec, cfg.vocab, env, run.retries, previous)
        fault_point("after:vocab")
        sentences = run.time("encode", encode, run.lake, run.dataset, run.method, run.run_id, vocab, run.retries)
        # finished (after every file it names exists): a killed run's re-run reuses them
        stage.finish(files=sentences.files, stats=vocab.stats, info=sentences.info)
    fault_point("after:encode")
    reused = {"vocab_reused": state is not None, "token_shards_reused": len(sentences.files) - 1 if state else 0}
    return vocab, sentences, reused, fingerprint(tokens_spec)


def train_words(run: Run, train_cfg: TrainConfig, vocab: Vocabulary, sentences: Sentences,
                tokens_fingerprint: str, previous: PreviousRun | None = None) -> StageResult:
    """The word table (stage `train`), checkpointed after every epoch: a killed run's re-run
    continues at the next epoch, or reuses the finished table. Returns StageResult(ref, info, files):
    with one worker the final output vectors are saved as run state (files kind `corpus_state`,
    what a later vocab.update run continues from; a reused table has none). previous: start from
    that run's tables, grown to this vocabulary (workers/corpus/update.py)."""
    stage = run.stage("train", {"tokens": tokens_fingerprint, "digest": digest(vocab),
                                "update_of": previous.run_id if previous is not None else None,
                                **{k: getattr(train_cfg, k) for k in TRAIN_KEYS}})
    done = stage.finished_table()
    if done is not None:
        return done
    init = None
    if previous is not None:
        init = remote(cu.grown_tables, "train", num_cpus=1, max_retries=run.retries).remote(
            previous.w_in_ref, previous.w_out_ref, vocab.size, train_cfg.seed)
    save = None
    if train_cfg.workers <= 1:
        run.owns(Lake.run_dir("state", run.dataset, run.method, run.run_id))
        save = (run.lake, run.dataset, run.method, run.run_id)
    emb_ref, info = run.time("train", train, vocab, sentences, train_cfg, run.retries, stage, init, save)
    state = info.pop("output_state", None)
    return StageResult(emb_ref, info, {cu.STATE_FILES: [state]} if state else {})


def previous_run(run: Run, cfg) -> PreviousRun:
    """The latest committed run of the dataset and method, loaded for a vocabulary update; one
    ConfigError line when there is none or it cannot be continued."""
    try:
        man = run.lake.manifest(run.dataset, run.method)
    except LakeError:
        raise ConfigError(f"vocab.update=true: no committed run of {run.dataset}/{run.method} in {run.lake.uri} "
                          f"to update (run without vocab.update first)") from None
    if int(man.extra.get("dim") or 0) != cfg.train.dim:
        raise ConfigError(f"vocab.update=true: train.dim={cfg.train.dim}, the previous run {man.run_id} has "
                          f"dim {man.extra.get('dim')}")
    vocab_file = [e for e in man.files.get("tokens", []) if e["path"].endswith("vocab/vocab.parquet")]
    state = man.files.get(cu.STATE_FILES) or []
    if not vocab_file or not state:
        raise ConfigError(f"vocab.update=true: the previous run {man.run_id} saved no "
                          f"{'vocabulary' if not vocab_file else 'output vectors'} (a run with train.workers > 1, "
                          f"or one resumed after training): run without vocab.update")
    words, counts, w_in, w_out = remote(cu.read_previous_stage, "corpus", num_cpus=1, num_returns=4,
                                        max_retries=run.retries).remote(run.lake, vocab_file[0],
                                                                        man.files["embeddings"], state[0])
    stage_logger().info(f"vocab.update: continuing run {man.run_id} ({man.extra.get('rows'):,} words)")
    return PreviousRun(man.run_id, int(man.extra.get("rows") or 0), words, counts, w_in, w_out)


@task(name="load_tokens", cache_policy=NO_CACHE)
def load_tokens(lake, state: dict, max_retries: int = 3) -> tuple[Vocabulary, Sentences]:
    """A killed run's vocabulary and token-id shards, read back from its run files (checked against
    their size and sha256) instead of tokenising the corpus again."""
    shard_files, vocab_file = state["files"][:-1], state["files"][-1]
    fn = remote(cs.read_sentences_stage, "corpus", num_cpus=1, num_returns=2, max_retries=max_retries)
    refs = [fn.remote(lake, f) for f in shard_files]
    words_ref, counts_ref = remote(cs.read_vocab_stage, "corpus", num_cpus=1, num_returns=2,
                                   max_retries=max_retries).remote(lake, vocab_file)
    stage_logger().info(f"resume: reusing vocabulary and {len(shard_files)} token shards "
                        f"({state['stats']['vocab']:,} words, {state['info']['train_sentences']:,} sentences)")
    vocab = Vocabulary(dict(state["stats"]), words_ref, counts_ref, [], [], [])
    return vocab, Sentences(list(state["files"]), [r[0] for r in refs], [r[1] for r in refs], dict(state["info"]))


@task(name="train", cache_policy=NO_CACHE)
def train(vocab: Vocabulary, sentences: Sentences, train_cfg: TrainConfig, max_retries: int = 3,
          stage: Stage | None = None, init_ref=None, save_output: tuple | None = None):
    """Skip-gram on all sentences in one multi-threaded Ray task; returns (table ref, stats).
    stage (the run's `train` stage): the tables are checkpointed after every epoch and a killed
    run's re-run continues at the next epoch. With train.workers > 1: the sharded block engine on
    the token shards across the workers instead (`train_token_shards`). init_ref: (W_in, W_out) to
    start from; save_output: where the final output vectors go (info["output_state"]: their entry)."""
    import ray
    if train_cfg.workers > 1:
        return train_token_shards(vocab, sentences, train_cfg, max_retries, stage)
    log = stage_logger()
    cpus = max_node_cpus()
    start = stage.resume_point("epoch", train_cfg.epochs, "training") if stage is not None and stage.enabled else 0
    progress = Progress("train", "tokens")
    fn = remote(cs.train_stage, "train", num_cpus=cpus, num_returns=2, max_retries=max_retries)
    parts = [x for pair in zip(sentences.token_refs, sentences.offset_refs) for x in pair]
    emb_ref, stats_ref = fn.remote(vocab.size, vocab.counts_ref, train_cfg, *parts, threads=train_cfg.threads or cpus,
                                   progress=progress.reporter("train"),
                                   checkpoint=stage.handle() if stage is not None else None, init_tables=init_ref,
                                   save_output=save_output)
    try:
        progress.wait([stats_ref])
    finally:
        progress.close()
    stats = ray.get(stats_ref)
    log.info(f"train: {stats.get('tokens', 0):,} tokens at {stats.get('tokens_per_s', 0):,.0f} tokens/s, "
             f"loss {stats.get('loss_first', float('nan')):.4f} -> {stats.get('loss_last', float('nan')):.4f}")
    info = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    info["resumed"] = {"stage": "train", "start_epoch": start, "table_reused": False}
    if stats.get("output_state"):
        info["output_state"] = stats["output_state"]
    return emb_ref, info


def train_token_shards(vocab: Vocabulary, sentences: Sentences, train_cfg: TrainConfig, max_retries: int = 3,
                       stage: Stage | None = None):
    """The sharded block engine (tasks/train.py `train_streams`) on the token shards: one prep per
    shard, blocks on `train.workers` workers. Partitions are word ids mod P (ids are sorted by
    frequency, so each partition gets its share of frequent words); the noise is the vocabulary's
    counts. The table is assembled by id in one task (a corpus table is one object downstream).
    Block checkpoints go to the run's checkpoint folder as for graphs (stage: the run's `train`
    stage, whose run it is). Returns (table ref, stats)."""
    split = sh.VocabSplit("stride", vocab.size, block_partitions(train_cfg))
    sources = list(zip(sentences.token_refs, sentences.offset_refs))
    run = stage.run if stage is not None and stage.enabled else None
    W_in, info = train_streams(ShardedInput(sources, 1, split, vocab.counts_ref), train_cfg, run=run,
                               max_retries=max_retries)
    emb_ref = remote(sh.assemble_split_stage, "train", num_cpus=1, max_retries=max_retries).remote(
        split, run.lake if run is not None and run.checkpoints else None, *W_in)
    info = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    info["resumed"] = {"stage": "train", "resumed_at": info.get("resumed_at", -1), "table_reused": False}
    return emb_ref, info


@task(name="publish", cache_policy=NO_CACHE)
def publish(lake, dataset: str, method: str, run_id: str, vocab: Vocabulary, emb_ref, partitions: int,
            max_retries: int = 3) -> list[dict]:
    """Rows token, count, vector in `partitions` files (data files only; the manifest comes last)."""
    from embedlake.workers.graph.stages import partition_bounds
    fn = remote(cs.write_words_part, "corpus", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, vocab.words_ref, vocab.counts_ref, emb_ref)
            for i, (lo, hi) in enumerate(partition_bounds(vocab.size, partitions))]
    return gather(refs, "publish (partitions)")


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(vocab: Vocabulary, emb_ref, eval_cfg: WordEvalConfig) -> dict:
    """WordSim353 / SimLex-999 Spearman rho, analogy accuracy, each with its OOV share."""
    import ray
    log = stage_logger()
    m = ray.get(remote(cs.evaluate_stage, "evaluate", num_cpus=1).remote(vocab.words_ref, vocab.counts_ref, emb_ref, eval_cfg))
    if not m:
        log.info("evaluate: no word benchmarks found (eval.benchmarks), skipped")
        return {}
    parts = [f"{k} rho {m[k]['spearman']:.3f} (OOV {m[k]['oov_share']:.0%})" for k in ("wordsim353", "simlex999")
             if k in m]
    if "analogy" in m:
        parts.append(f"analogy {m['analogy']['accuracy']:.1%} (OOV {m['analogy']['oov_share']:.0%})")
    log.info("evaluate: " + ", ".join(parts))
    return m
