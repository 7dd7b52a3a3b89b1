"""Stage checkpoints of one run in the lake, so a killed run resumes instead of recomputing (issue 10).

Layout under `Lake.run_dir("checkpoints", dataset, method, run_id)` (.npy and JSON only, never a
pickle):

    walk/state.json                 {"fingerprint", "spec"}: the walks' graph version + settings
    walk/part-<i>.npy               walks of start-node partition i, written by its task when done
    train/state.json                {"fingerprint", "spec", "epoch": k, "final", "info"}
    train/epoch=<k>/w_in.npy, w_out.npy     one-table training after epoch k (final: w_in only)
    stream/state.json               {"fingerprint", "spec", "round": r, "final", "info"}
    stream/round=<r>/w_in.npy, w_out.npy, counts.npy    streamed training after round r
    table/state.json, table/emb.npy the finished table of engines without their own checkpoints
    state.json, step=<k>/...        block-partitioned training (tasks/train.py)

Every stage state carries a fingerprint of everything that determines the stage's output (graph
version, the stage's settings, the previous stage's fingerprint). A re-run whose fingerprint
differs (other input, other settings) removes that stage's checkpoint and starts it over; a state
is written only after the files it names, so a kill never leaves a state pointing at nothing.
The flows remove the whole folder after the commit.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from embedlake.lake import Lake


def fingerprint(spec: dict) -> str:
    """Stable hash of a JSON-able spec (key order does not matter)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def stage_dir(run_dir: str, stage: str) -> str:
    return f"{run_dir}/{stage}"


def read_state(lake: Lake, run_dir: str, stage: str) -> dict | None:
    rel = f"{stage_dir(run_dir, stage)}/state.json"
    try:
        return lake.read_json(rel) if lake.exists(rel) else None
    except Exception:  # noqa: BLE001 - an unreadable state is no state (start over)
        return None


def open_stage(lake: Lake, run_dir: str, stage: str, spec: dict, resume: bool) -> tuple[dict, dict | None, bool]:
    """(base, state to resume from or None, whether an old checkpoint was discarded).

    base = {"fingerprint", "spec"} of this run's stage (what later checkpoints extend). A matching
    state is returned as is; a state of other input/settings (or any state when resume is off) is
    removed with the stage's files. With no usable state the base is written as a fresh state (no
    progress yet), so the stage's tasks can add their files under it."""
    base = {"fingerprint": fingerprint(spec), "spec": spec}
    state = read_state(lake, run_dir, stage)
    if state is not None and resume and state.get("fingerprint") == base["fingerprint"]:
        return base, state, False
    discarded = state is not None or bool(lake.list_files(stage_dir(run_dir, stage)))
    if discarded:
        lake.delete(stage_dir(run_dir, stage), recursive=True)
    write_state(lake, run_dir, stage, base)
    return base, None, discarded


def write_state(lake: Lake, run_dir: str, stage: str, state: dict) -> None:
    lake.write_json(f"{stage_dir(run_dir, stage)}/state.json", state)


def advance(lake: Lake, run_dir: str, stage: str, base: dict, key: str, value: int, files: dict[str, np.ndarray],
            final: bool = False, info: dict | None = None, prev: int | None = None) -> dict:
    """Checkpoint step `value` of a stage: write `files` under <stage>/<key>=<value>/, then the state
    naming them (base = {"fingerprint", "spec"} + key/value, final, folder, info), then remove the
    previous step's folder `prev` (so at most one step is kept). Returns the new state."""
    d = stage_dir(run_dir, stage)
    folder = f"{d}/{key}={int(value):06d}"
    for name, arr in files.items():
        lake.write_npy(f"{folder}/{name}.npy", arr)
    state = {"fingerprint": base["fingerprint"], "spec": base.get("spec"), key: int(value), "final": bool(final),
             "folder": folder, "info": info or {}}
    write_state(lake, run_dir, stage, state)
    if prev is not None and int(prev) != int(value):
        lake.delete(f"{d}/{key}={int(prev):06d}", recursive=True)
    return state


def load(lake: Lake, state: dict, name: str) -> np.ndarray:
    """One array of the checkpointed step a state names."""
    return lake.read_npy(f"{state['folder']}/{name}.npy")


def walk_part_path(run_dir: str, partition: int) -> str:
    return f"{stage_dir(run_dir, 'walk')}/part-{int(partition):05d}.npy"


def finished_walk_parts(lake: Lake, run_dir: str) -> set[int]:
    """Partitions whose walks were written (a file exists only once complete: writes are atomic)."""
    out = set()
    for rel in lake.list_files(stage_dir(run_dir, "walk")):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".npy"):
            out.add(int(name[5:-4]))
    return out


def save_table(lake: Lake, run_dir: str, stage: str, base: dict, table: np.ndarray, info: dict | None = None) -> str:
    """The finished table of an engine without its own checkpoints (FastRP, corpus training):
    <stage>/step=000001/w_in.npy + a final state, so a re-run after a kill in publish, evaluate or
    commit reuses it. Returns the state's folder."""
    return advance(Lake(lake), run_dir, stage, base, "step", 1, {"w_in": table}, final=True, info=info)["folder"]


def vocab_digest(words, counts: np.ndarray) -> str:
    """Content hash of a vocabulary (its words in id order and their counts)."""
    h = hashlib.sha256()
    for w in words:
        h.update(str(w).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def load_checkpoint_array(lake: Lake | str, state: dict, name: str) -> np.ndarray:
    """One array of a checkpointed step (e.g. the finished table of a killed run)."""
    return load(Lake(lake), state, name)

