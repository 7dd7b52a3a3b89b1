"""Stage checkpoints of one run in the lake, so a killed run resumes instead of recomputing (issue 10).

Layout under `Lake.run_dir("checkpoints", dataset, method, run_id)` (.npy and JSON only, never a
pickle):

    walk/state.json                 {"fingerprint", "spec"}: the walks' graph version + settings
    walk/part-<i>.npy               walks of start-node partition i, written by its task when done
    train/state.json                {"fingerprint", "spec", "epoch": k, "final", "info"}
    train/epoch=<k>/w_in.npy, w_out.npy     one-table training after epoch k (final: w_in only)
    stream/state.json               {"fingerprint", "spec", "round": r, "final", "info"}
    stream/round=<r>/w_in.npy, w_out.npy, counts.npy    streamed training after round r
    table/state.json, table/step=000001/w_in.npy    the finished table of engines without their own
                                    checkpoints (FastRP)
    tokens/state.json               the corpus run's vocabulary + token-id shard files (run files)
    state.json, step=<k>/...        block-partitioned training (tasks/train.py)

Every stage state carries a fingerprint of everything that determines the stage's output (graph
version, the stage's settings, the previous stage's fingerprint). A re-run whose fingerprint
differs (other input, other settings) removes that stage's checkpoint and starts it over; a state
is written only after the files it names, so a kill never leaves a state pointing at nothing.
The driver opens a stage through its run (tasks/run.py `Run.stage`) and hands the Ray tasks a
`StageHandle`; the run removes the whole folder after its commit.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

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


def part_path(run_dir: str, stage: str, partition: int) -> str:
    """File of partition `partition` of a partitioned stage (the walks: walk/part-<i>.npy)."""
    return f"{stage_dir(run_dir, stage)}/part-{int(partition):05d}.npy"


def finished_parts(lake: Lake, run_dir: str, stage: str) -> set[int]:
    """Partitions of a stage whose file was written (a file exists only once complete: writes are atomic)."""
    out = set()
    for rel in lake.list_files(stage_dir(run_dir, stage)):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".npy"):
            out.add(int(name[5:-4]))
    return out


@dataclass
class StageHandle:
    """What a Ray task needs to checkpoint one stage of a run (the driver's `tasks/run.Stage.handle`):
    where the run's checkpoints live, the stage's base state {"fingerprint", "spec"}, the state of a
    killed attempt to continue from (None: start over) and the step whose folder the next `advance`
    replaces. Small and picklable; Lake pickles as its URI."""
    lake: Lake
    run_dir: str
    stage: str
    base: dict
    resume_state: dict | None = None
    prev: int | None = None

    def advance(self, key: str, value: int, files: dict[str, np.ndarray], final: bool = False,
                info: dict | None = None) -> dict:
        """Checkpoint step `value` (see `advance`); the step it replaces is remembered for the next."""
        state = advance(Lake(self.lake), self.run_dir, self.stage, self.base, key, value, files, final=final,
                        info=info, prev=self.prev)
        self.prev = int(value)
        return state

    def load(self, name: str) -> np.ndarray:
        """One array of the step a killed attempt checkpointed (the resume state)."""
        return load(Lake(self.lake), self.resume_state, name)

    def resume_step(self, key: str) -> int:
        """The step the resume state records (0 when starting over)."""
        return int(self.resume_state.get(key, 0)) if self.resume_state is not None else 0

    def set_final_info(self, info: dict) -> None:
        """Attach the figures of the finished stage to its final state (a re-run that reuses the
        finished table reports them)."""
        state = read_state(Lake(self.lake), self.run_dir, self.stage)
        if state is not None and state.get("final"):
            state["info"] = info
            write_state(Lake(self.lake), self.run_dir, self.stage, state)

    def part_path(self, partition: int) -> str:
        """Where partition `partition` of a partitioned stage (the walks) is written."""
        return part_path(self.run_dir, self.stage, partition)


def vocab_digest(words, counts: np.ndarray) -> str:
    """Content hash of a vocabulary (its words in id order and their counts)."""
    h = hashlib.sha256()
    for w in words:
        h.update(str(w).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def save_table(stage: StageHandle, table: np.ndarray, info: dict | None = None) -> str:
    """The finished table of an engine without its own checkpoints (FastRP, corpus training):
    <stage>/step=000001/w_in.npy + a final state, so a re-run after a kill in publish, evaluate or
    commit reuses it. Returns the state's folder."""
    return stage.advance("step", 1, {"w_in": table}, final=True, info=info)["folder"]


def load_table(stage: StageHandle) -> np.ndarray:
    """The finished table a killed attempt checkpointed (its final state is the handle's resume state)."""
    return stage.load("w_in")
