"""Killed corpus runs resume (issue 10): an `embedlake embed-corpus` run SIGKILLed after its token
shards were written is re-run with the same run id and commits; another is killed after training
epoch 1 of 3, its re-run (continuing at epoch 2) killed after publishing, and its third attempt
commits. Each re-run takes over the dead claim, reuses what was checkpointed (asserted through its
log, stage list and manifest, not timings), and the committed table is exactly that of an
uninterrupted run (one training thread: bit-reproducible), with the same token files.

The corpus is generated here (seeded Zipf words, cut into 3 shards), so the test needs no shared
data. Runs are CLI subprocesses in their own sessions, as in tests/test_resume.py (the
EMBEDLAKE_FAULT hook kills the whole session); the attempts of the two lakes go in parallel, step by
step, the reference run with the last step. In-process: the token-shard reader inverts the writer, and a changed
input or text setting gives another tokens fingerprint.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli_proc import start_cli, wait_cli
from embedlake.lake import Lake

# lake -> the faults of its successive attempts (None: the attempt that must commit)
ATTEMPTS = {"tokens": ["after:encode", None],
            "train": ["after:train_epoch:1", "after:publish", None]}
SHARD_MB = 0.05
ARGS = ["-p", "train.threads=1", "-p", "train.epochs=3", "-p", "train.dim=16", "-p", "vocab.min_count=2",
        "-p", f"input.shard_mb={SHARD_MB}", "-p", "ray.num_cpus=1", "-p", "eval.benchmarks=/nonexistent",
        "-p", "partitions=2"]
DS, METHOD = "text", "skipgram"


def _corpus(path: Path, lines: int = 4000) -> Path:
    """Seeded Zipf text (about 48k tokens, 300 distinct words): 3 shards at shard_mb=0.1."""
    rng = np.random.default_rng(7)
    words = np.array([f"w{i}" for i in range(300)])
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            ids = np.minimum(rng.zipf(1.3, size=int(rng.integers(4, 20))) - 1, 299)
            f.write(" ".join(words[ids]) + "\n")
    return path


def _cli(tmp: Path, corpus: Path, lake: Path, log: Path, fault: str | None) -> subprocess.Popen:
    return start_cli(tmp, ["embed-corpus", "--input", str(corpus), "--dataset", DS, "--lake", str(lake), "--run-id",
                           "r", "--json", *ARGS], log, fault)


def _wait(p: subprocess.Popen, timeout: float = 240) -> int:
    return wait_cli(p, timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_session):
    from embedlake.workers.corpus.text import plan_shards
    tmp = tmp_path_factory.mktemp("resume_corpus")
    corpus = _corpus(tmp / "corpus.txt")
    out: dict = {"tmp": tmp, "shards": len(plan_shards(str(corpus), int(SHARD_MB * (1 << 20))))}
    ck = Lake.run_dir("checkpoints", DS, METHOD, "r")
    steps = max(len(a) for a in ATTEMPTS.values())
    for step in range(steps):
        procs = {}
        if step == steps - 1:              # the reference run goes with the step that has room (2 cores)
            procs["ref"] = _cli(tmp, corpus, tmp / "ref", tmp / "ref.log", None)
        for name, faults in ATTEMPTS.items():
            if step < len(faults):
                procs[name] = _cli(tmp, corpus, tmp / name, tmp / f"{name}.{step}.log", faults[step])
        for name, p in procs.items():      # the attempts of one step go in parallel
            rc = _wait(p)
            text = (tmp / (f"{name}.{step}.log" if name in ATTEMPTS else "ref.log")).read_text(errors="replace")
            r = out.setdefault(name, {"logs": []})
            r["logs"].append(text)
            if name == "ref" or ATTEMPTS[name][step] is None:
                assert rc == 0, (name, step, text[-3000:])
                r["summary"] = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
                continue
            assert rc == -9, (name, step, rc, text[-3000:])        # SIGKILL: no clean-up ran
            lk = Lake(str(tmp / name))
            r.setdefault("after_kill", []).append({
                "committed": lk.is_committed(DS, METHOD, "r"), "claim": lk.exists(Lake.claim_path(DS, METHOD, "r")),
                "checkpoints": lk.list_files(ck),
                "token_mtimes": {f: os.stat(tmp / name / f).st_mtime_ns
                                 for f in lk.list_files(Lake.run_dir("tokens", DS, METHOD, "r"))}})
    return out


def _table(lake: Path):
    import embedlake
    df = embedlake.read_embeddings(str(lake), DS, METHOD, run="r").sort("token")
    return df["token"].to_list(), df["count"].to_numpy(), np.stack(df["vector"].to_numpy())


@pytest.mark.parametrize("lake", list(ATTEMPTS))
def test_killed_corpus_run_resumes_to_the_uninterrupted_table(runs, lake):
    r = runs[lake]
    tmp, n = runs["tmp"], runs["shards"]
    assert n >= 3
    # after each kill: nothing visible to readers; the dead writer's claim and the tokens checkpoint remain
    for k in r["after_kill"]:
        assert not k["committed"] and k["claim"]
        assert any(f.endswith("/tokens/state.json") for f in k["checkpoints"])
    reruns = r["logs"][1:]
    for log in reruns:
        assert "no longer running): its claim is taken over" in log
        # the vocabulary and every token shard come from the first attempt: not tokenised, not rewritten
        assert f"resume: reusing vocabulary and {n} token shards" in log
    stages = r["summary"]["stages"]
    assert "load_tokens" in stages and "vocabulary" not in stages and "encode" not in stages
    lk = Lake(str(tmp / lake))
    tok_dir = Lake.run_dir("tokens", DS, METHOD, "r")
    assert {f: os.stat(tmp / lake / f).st_mtime_ns for f in lk.list_files(tok_dir)} == \
        r["after_kill"][0]["token_mtimes"]
    # bit-identical to the uninterrupted run with the same seed; the same token files
    ref = _table(tmp / "ref")
    got = _table(tmp / lake)
    assert ref[0] == got[0] and np.array_equal(ref[1], got[1]) and np.array_equal(ref[2], got[2])
    man = lk.manifest(DS, METHOD, "r")
    ref_man = Lake(str(tmp / "ref")).manifest(DS, METHOD, "r")
    assert [f["sha256"] for f in man.files["tokens"]] == [f["sha256"] for f in ref_man.files["tokens"]]
    assert len(man.files["tokens"]) == n + 1 and man.extra["corpus"] == ref_man.extra["corpus"]
    resumed = man.extra["train"]["resumed"]
    assert resumed["vocab_reused"] is True and resumed["token_shards_reused"] == n
    per_epoch = ref_man.extra["train"]["tokens"] // 3
    if lake == "tokens":      # killed after tokenising: tokens reused, training from the first epoch
        assert resumed["start_epoch"] == 0 and resumed["table_reused"] is False
        assert man.extra["train"]["tokens"] == 3 * per_epoch
    else:                     # killed after epoch 1, then (resumed at epoch 2) after publish: table reused
        assert "resume: training continues at epoch 2/3" in reruns[0]
        assert "resume: the trained table of run r is reused" in reruns[1]
        assert resumed["table_reused"] is True and "train" not in stages
        assert man.extra["train"]["start_epoch"] == 1 and man.extra["train"]["tokens"] == 2 * per_epoch
        assert any("/train/epoch=000001/w_out.npy" in f for f in r["after_kill"][0]["checkpoints"])
    # committed: checkpoints and claim gone
    assert not lk.exists(Lake.run_dir("checkpoints", DS, METHOD, "r"))
    assert not lk.exists(Lake.claim_path(DS, METHOD, "r"))


def test_uninterrupted_corpus_run_records_no_reuse(runs):
    lk = Lake(str(runs["tmp"] / "ref"))
    man = lk.manifest(DS, METHOD, "r")
    assert man.extra["train"]["resumed"] == {"stage": "train", "start_epoch": 0, "table_reused": False,
                                             "vocab_reused": False, "token_shards_reused": 0}
    assert lk.list_files("checkpoints") == []


# ---- pieces, in process ------------------------------------------------------------------------------
def test_token_shard_reader_inverts_the_writer(tmp_path):
    from embedlake.errors import LakeError
    from embedlake.workers.corpus import text as wc
    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 9, 50)
    ids = rng.integers(0, 30, int(lens.sum())).astype(np.int32)
    remap = np.where(np.arange(30) % 4 == 0, -1, np.arange(30)).astype(np.int32)
    entry, tokens, offsets = wc.encode_stage(lake, DS, METHOD, "r", 0, remap, ids, lens)
    t2, o2 = wc.read_sentences_stage(lake, entry)
    assert t2.dtype == np.int32 and o2.dtype == np.int64
    assert np.array_equal(t2, tokens) and np.array_equal(o2, offsets)
    words, counts = [f"w{i}" for i in range(5)], np.array([9, 7, 7, 3, 1], np.int64)
    ventry = wc.write_vocab_stage(lake, DS, METHOD, "r", words, counts)
    w2, c2 = wc.read_vocab_stage(lake, ventry)
    assert w2 == words and np.array_equal(c2, counts)
    lake.write_parquet(entry["path"], wc.sentences_table(tokens[:-1], np.minimum(offsets, len(tokens) - 1)))
    with pytest.raises(LakeError, match="changed since it was checkpointed"):
        wc.read_sentences_stage(lake, entry)


def test_tokens_fingerprint_follows_input_and_settings(tmp_path):
    from embedlake.tasks.corpus import corpus_tokens_spec, input_stamps
    from embedlake.workers.corpus import text as wc
    from embedlake.workers.run.checkpoints import fingerprint
    p = _corpus(tmp_path / "c.txt", lines=50)
    shards = wc.plan_shards(str(p))
    inp, text, vocab = {"path": str(p), "shard_mb": 32.0}, wc.TextSpec().__dict__, {"min_count": 2}
    fp = lambda: fingerprint(corpus_tokens_spec(inp, shards, input_stamps(shards), text, vocab))  # noqa: E731
    a = fp()
    assert fp() == a
    text = {**text, "lowercase": True}
    b = fp()
    assert b != a
    with open(p, "a") as f:
        f.write("w1 w2\n")
    assert fp() != b                      # the file changed (size and mtime)
