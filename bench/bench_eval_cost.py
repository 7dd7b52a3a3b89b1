"""What the default evaluation costs against the rest of a run (issue 22), for one or more checkouts.

Each case runs `embedlake embed-graph --json` of each checkout (its own .venv) on the same input,
and prints the run's stage times, the evaluation's seconds per component (from the metrics the
run commits) and the ratio evaluation / other stages (Ray's start-up left out), with the quality
figures beside them so a cheaper evaluation can be checked against the figures it replaced.

Cases (``--cases``):
  karate       DeepWalk, labels (2), defaults: the smallest scale the issue names
  blogcatalog  DeepWalk, labels (39, multi-label), defaults
  deezer_ro    FastRP d=512 on deezer_ro (84 labels, 41,773 nodes), when ../shared/datasets/deezer_ro
               exists; else the case stops with a message (github and ppi stand in for it)
  ppi          FastRP d=512, labels (50, multi-label): many labels and dimensions
  deezer_europe FastRP d=512 on deezer_europe (2 labels, 28,281 nodes): the closest stand-in for deezer_ro
  github       FastRP d=512 on github_social, labels (2, 37,700 nodes): a large labelled set
  rmat         R-MAT graph, no labels, 1 walk x 40 steps, d=64 (``--rmat-edges``, ~10 edges per node;
               the default 19.2 M edges gives the issue's 2.1 M nodes)

    .venv/bin/python bench/bench_eval_cost.py [--checkouts /path/before,/path/after] [--cases ...]
                                              [--rmat-edges 19200000] [--out /tmp/embedlake-evalcost]
                                              [-p eval.key=value ...]

``--eval-only LAKE``: no pipeline run; evaluate the table each case last committed in LAKE (a lake of an
earlier run of this script, e.g. /tmp/embedlake-evalcost/lake-0) with this checkout's stage functions
in this process (no Ray), timing each component (wall and CPU): for iterating on the evaluation of a
large graph without training it again. Run it with another checkout's python to time that one's.
``--compare-warm LAKE``: node classification's 9 fits cold vs chained by warm starts, CPU seconds and
the change of the mean F1 (labelled cases).
``--first-call LAKE``: the figures task's components as a fresh Ray worker pays them, without Ray: for
each case and each of ``--checkouts`` (alternating, ``--rounds`` times), a fresh process of that
checkout's python with the workers' allocator settings and numba already initialised (FastRP's tasks
do that in the pipeline's workers; ``--cold-numba``: not imported, so the component that first needs it
pays its import and first cache load) maps the case's table read-only (as the object store hands it),
then runs node classification and reconstruction once each: CPU seconds (user + system), page
faults and the figures. The table is the case's last one in LAKE, saved once as .npy beside --out.
``--figures-task``: the whole figures task (``figures_stage``) in each fresh process instead, as one
component: what the components share (the table's row norms) shows only there.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def case_args(case: str, out: str, rmat_edges: int) -> list[str]:
    if case == "karate":
        d = SHARED / "karate"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv")]
    if case == "blogcatalog":
        d = SHARED / "blogcatalog"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv")]
    if case == "deezer_ro":
        d = SHARED / "deezer_ro"
        if not (d / "edges.tsv").exists():
            raise SystemExit(f"deezer_ro: {d}/edges.tsv not found (github and ppi are the stand-ins)")
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "ppi":
        d = SHARED / "ppi"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "deezer_europe":
        d = SHARED / "deezer_europe"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "github":
        d = SHARED / "github_social"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "rmat":
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_scale import edge_file
        path, _ = edge_file(rmat_edges, out)
        return ["--edges", path, "--dataset", f"rmat{rmat_edges}", "-p", "walk.walks_per_node=1",
                "-p", "walk.length=40", "-p", "train.dim=64"]
    raise SystemExit(f"unknown case {case!r}")


def run_case(checkout: Path, case: str, args: list[str], lake: str, overrides: list[str] = ()) -> dict:
    exe = checkout / ".venv" / "bin" / "embedlake"
    cmd = [str(exe), "embed-graph", "--lake", lake, "--json", "-p", "eval.align_to_previous=false",
           "-p", "eval.artifacts=false", *args, *[x for o in overrides for x in ("-p", o)]]
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        cpu = TreeCPU(proc.pid)
        cpu.start()
        out, err = proc.communicate()
        cpu.halt()
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if p.returncode != 0:
        raise SystemExit(f"{checkout} {case}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    s = json.loads(p.stdout.strip().splitlines()[-1])
    stages = {k: v["wall_s"] for k, v in s["stages"].items()}
    other = sum(v for k, v in stages.items() if k not in ("evaluate", "ray_start"))
    m = s.get("metrics", {})
    comp = {k: m[k].get("seconds") for k in ("node_classification", "reconstruction", "link_prediction")
            if isinstance(m.get(k), dict) and "seconds" in m[k]}
    nc, rc = m.get("node_classification") or {}, m.get("reconstruction") or {}
    return {"checkout": str(checkout), "case": case, "rows": s["rows"], "stages": stages,
            "other_s": round(other, 2), "evaluate_s": stages.get("evaluate"),
            "ratio": round(stages.get("evaluate", 0) / other, 3) if other else None, "components_s": comp,
            "micro_f1": nc.get("micro_f1"), "macro_f1": nc.get("macro_f1"), "map": rc.get("map"),
            "map_ci95": rc.get("ci95"), "map_sampled": rc.get("sampled"), "map_truncated": rc.get("truncated"),
            "bench_wall_s": round(time.perf_counter() - t0, 1), "timeline": evaluate_timeline(p.stderr),
            **stage_cpu(p.stderr, s["stages"], cpu)}


class TreeCPU(threading.Thread):
    """CPU seconds (user + system) of a run: its process and every descendant (Ray's GCS, raylet
    and workers, Prefect's temporary server), sampled every ``period`` s as (epoch, cumulative);
    a process that exits keeps its last sample. Why: on the shared machine a stage's wall time is
    mostly waiting for a core, its CPU seconds are what it costs (lead's note: ratios in CPU-s)."""

    def __init__(self, pid: int, period: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples, self.done = pid, period, [], threading.Event()
        self.per_process: dict[int, list] = {}          # pid -> [(epoch, cumulative)], for `by_process`
        self.kinds: dict[int, str] = {}

    def run(self):
        import psutil
        last: dict[int, float] = {}
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            now = time.time()
            for q in procs:
                try:
                    t = q.cpu_times()
                    last[q.pid] = t.user + t.system
                    if q.pid not in self.kinds:
                        self.kinds[q.pid] = process_kind(q, self.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.per_process.setdefault(q.pid, []).append((now, last[q.pid]))
            self.samples.append((now, sum(last.values())))
            self.done.wait(self.period)

    def halt(self):
        self.done.set()
        self.join()

    def by_process(self, t0: float, t1: float, worker_pid: int | None = None) -> dict:
        """CPU seconds between t0 and t1 per kind of process (driver, raylet, gcs, prefect server,
        dashboard, idle Ray workers; the figures task's worker on its own)."""
        import numpy as np
        out: dict[str, float] = {}
        for pid, samples in self.per_process.items():
            t, c = zip(*samples)
            kind = "figures worker" if pid == worker_pid else self.kinds.get(pid, "other")
            used = float(np.interp(t1, t, c) - np.interp(t0, t, c))
            out[kind] = round(out.get(kind, 0.0) + used, 3)
        return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}

    def at(self, epoch: float) -> float:
        """Cumulative CPU seconds at ``epoch`` (linear between samples)."""
        import numpy as np
        t, c = zip(*self.samples) if self.samples else ((0.0,), (0.0,))
        return float(np.interp(epoch, t, c))


def process_kind(proc, root: int) -> str:
    """A name for a process of the run's tree (what costs CPU while the evaluate stage waits)."""
    if proc.pid == root:
        return "driver"
    line = " ".join(proc.cmdline())
    for key, kind in (("raylet", "raylet"), ("gcs_server", "gcs"), ("default_worker", "other Ray workers"),
                      ("uvicorn", "prefect server"), ("dashboard", "dashboard"), ("log_monitor", "log monitor")):
        if key in line:
            return kind
    return "other"


TASK_END = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \| INFO +\| Task run '([a-z_]+)-[0-9a-f]+' - Finished in state")


def stage_cpu(log: str, stages: dict, cpu: TreeCPU) -> dict:
    """CPU seconds of the evaluate stage (publish's end to evaluate's end) and of the other stages
    (ingest's start, i.e. its end minus its wall time, to publish's end), from the Prefect log's
    task end times (local clock, millisecond) and the run's CPU samples."""
    ends = {}
    midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
    for line in log.splitlines():
        m = TASK_END.match(line)
        if m:
            at = midnight + int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
            ends[m[4]] = at - 86400 if at > time.time() + 3600 else at
    if not {"ingest", "publish", "evaluate"} <= ends.keys() or not cpu.samples:
        return {"other_cpu_s": None, "evaluate_cpu_s": None, "cpu_ratio": None, "evaluate_cpu_by_process": None}
    start = ends["ingest"] - stages["ingest"]["wall_s"]
    other, ev = cpu.at(ends["publish"]) - cpu.at(start), cpu.at(ends["evaluate"]) - cpu.at(ends["publish"])
    worker = re.search(r"figures task started in worker (\d+)", log)
    by_process = cpu.by_process(ends["publish"], ends["evaluate"], int(worker[1]) if worker else None)
    return {"other_cpu_s": round(other, 2), "evaluate_cpu_s": round(ev, 2),
            "cpu_ratio": round(ev / other, 3) if other else None, "evaluate_cpu_by_process": by_process}


def evaluate_timeline(log: str) -> str | None:
    """The evaluate task's timeline line of a run's log (checkouts from the sixth round on log it)."""
    lines = [x for x in log.splitlines() if "evaluate: timeline" in x]
    return lines[-1].split("evaluate: timeline", 1)[1].strip() if lines else None


def case_dataset(args: list[str]) -> tuple[str, str]:
    """(dataset, method) of a case's run, as the CLI names them."""
    method = args[args.index("--method") + 1] if "--method" in args else "deepwalk"
    if "--dataset" in args:
        return args[args.index("--dataset") + 1], method
    return Path(args[args.index("--edges") + 1]).parent.name, method


def case_table(lake_uri: str, args: list[str]):
    """(X in the graph's row order, the graph, labels or None) of the case's latest table in the lake."""
    import numpy as np

    from embedlake.reader import read_table
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph, read_labels
    dataset, method = case_dataset(args)
    table, _ = read_table(lake_uri, dataset, method)
    g = ingest_graph(args[args.index("--edges") + 1], EdgeSpec())
    ids = np.asarray(table.column("node").to_numpy(zero_copy_only=False))
    vec = table.column("vector").combine_chunks()
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size)
    sorter = np.argsort(ids)                          # the table's rows in the graph's dense order
    X = X[sorter[np.searchsorted(ids[sorter], np.asarray(g.node_ids))]]
    labels = read_labels(args[args.index("--labels") + 1], g.node_ids, "int") if "--labels" in args else None
    return X, g, labels


def eval_only(lake_uri: str, case: str, args: list[str], overrides: list[str]) -> dict:
    """Each evaluation component of the case's latest committed table in ``lake_uri``, timed in this
    process with this checkout's stage functions (eval.* from ``overrides``): wall and CPU seconds."""
    from embedlake.config import load_config
    from embedlake.workers.evaluate import stages as es
    cfg = load_config(None, [o for o in overrides if o.startswith("eval.")]).eval
    X, g, labels = case_table(lake_uri, args)
    out = {"case": case, "rows": int(X.shape[0]), "components_s": {}, "components_cpu_s": {}}
    csr = (g.csr.indptr, g.csr.indices, g.csr.weights, g.csr.directed)
    if cfg.reconstruction:
        c0 = time.process_time()
        rc = es.reconstruct_stage(X, csr, cfg)
        out["components_s"]["reconstruction"] = rc["seconds"]
        out["components_cpu_s"]["reconstruction"] = round(time.process_time() - c0, 3)
        out.update(map=rc["map"], map_ci95=rc["ci95"], queries=rc["queries"])
    if labels is not None:
        c0 = time.process_time()
        nc = es.classify_stage(X, labels, cfg)
        out["components_s"]["node_classification"] = nc["seconds"]
        out["components_cpu_s"]["node_classification"] = round(time.process_time() - c0, 3)
        out.update(micro_f1=nc["micro_f1"], macro_f1=nc["macro_f1"])
    return out


def compare_warm(lake_uri: str, case: str, args: list[str]) -> dict:
    """Node classification's 9 fits cold (each from W = 0) and chained by warm starts
    (``split_chain_f1``) on the case's table: CPU seconds and the change of the mean F1."""
    import numpy as np

    from embedlake.workers.evaluate import classify as C
    X, _, labels = case_table(lake_uri, args)
    ls = C.labelled_set(X, labels[0], labels[1])
    splits = [(r, rep) for rep in range(3) for r in (0.1, 0.5, 0.9)]
    c0 = time.process_time()
    cold = [(r, rep, *C.split_f1(ls, r, rep)) for r, rep in splits]
    cold_s = time.process_time() - c0
    c0 = time.process_time()
    warm = C.split_chain_f1(ls, splits)
    warm_s = time.process_time() - c0

    def mean(rows, r, k):
        return float(np.mean([x[k] for x in rows if x[0] == r]))
    return {"case": case, "cold_cpu_s": round(cold_s, 3), "warm_cpu_s": round(warm_s, 3),
            "mean_micro_change": {r: round(mean(warm, r, 2) - mean(cold, r, 2), 5) for r in (0.1, 0.5, 0.9)},
            "mean_macro_change": {r: round(mean(warm, r, 3) - mean(cold, r, 3), 5) for r in (0.1, 0.5, 0.9)}}


FIRST_CALL_CHILD = """
import json, os, resource, sys
import numpy as np
if sys.argv[2] == "warm":                       # numba initialised, as after FastRP's tasks in a worker
    import numba
    numba.njit(lambda x: x + 1)(1)
from embedlake.config import EvalConfig
from embedlake.workers.evaluate import stages as es
d = sys.argv[1]
X = np.load(os.path.join(d, "X.npy"), mmap_mode="r")
csr = (np.load(os.path.join(d, "indptr.npy")), np.load(os.path.join(d, "indices.npy")), None, False)
labels = (np.load(os.path.join(d, "nodes.npy")), np.load(os.path.join(d, "labels.npy"))) \
    if os.path.exists(os.path.join(d, "nodes.npy")) else None
cfg = EvalConfig()
def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt
out = {}
calls = (("figures_task", lambda: es.figures_stage(X, labels, csr, cfg)),) if sys.argv[3] == "task" else (
    ("node_classification", lambda: es.classify_stage(X, labels, cfg) if labels else None),
    ("reconstruction", lambda: es.reconstruct_stage(X, csr, cfg)))
for name, call in calls:
    a = usage(); res = call(); b = usage()
    out[name] = {"cpu_s": round(b[0] - a[0], 3), "sys_s": round(b[1] - a[1], 3), "faults": b[2] - a[2]}
    if res and name == "figures_task":
        res.pop("timeline")
        out[name].update(micro_f1=res.get("node_classification", {}).get("micro_f1"),
                         map=res.get("reconstruction", {}).get("map"))
    elif res and name == "node_classification":
        out[name].update(micro_f1=res["micro_f1"], macro_f1=res["macro_f1"])
    elif res:
        out[name].update(map=res["map"])
print(json.dumps(out))
"""


def first_call(lake_uri: str, case: str, args: list[str], checkouts: list[str], rounds: int, out: str,
               cold_numba: bool = False, task: bool = False) -> list[dict]:
    """``--first-call``: each checkout's components in fresh processes, alternating (see the docstring)."""
    import numpy as np
    d = os.path.join(os.path.abspath(out), f"table-{case}")
    if not os.path.exists(os.path.join(d, "X.npy")):
        X, g, labels = case_table(lake_uri, args)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "X.npy"), np.ascontiguousarray(X, dtype=np.float32))
        np.save(os.path.join(d, "indptr.npy"), g.csr.indptr)
        np.save(os.path.join(d, "indices.npy"), g.csr.indices)
        if labels is not None:
            np.save(os.path.join(d, "nodes.npy"), np.asarray(labels[0]))
            np.save(os.path.join(d, "labels.npy"), np.asarray(labels[1]))
    from embedlake.tasks.runtime import WORKER_ALLOCATOR_ENV
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               **WORKER_ALLOCATOR_ENV)
    results = []
    for r in range(rounds):
        for co in checkouts:
            # cwd=co: `python -c` puts the working directory first on sys.path, so from another checkout's
            # root its `embedlake` package (config defaults, lake) would shadow this checkout's
            p = subprocess.run([str(Path(co) / ".venv" / "bin" / "python"), "-c", FIRST_CALL_CHILD, d,
                                "cold" if cold_numba else "warm", "task" if task else "components"], env=env,
                               capture_output=True, text=True, check=True, cwd=co)
            results.append({"case": case, "checkout": co, "round": r, **json.loads(p.stdout.strip().splitlines()[-1])})
            print(json.dumps(results[-1]), flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkouts", default=str(ROOT), help="comma-separated repo roots, each with its .venv")
    ap.add_argument("--cases", default="blogcatalog,ppi,rmat")
    ap.add_argument("--rmat-edges", type=int, default=19_200_000)
    ap.add_argument("--out", default="/tmp/embedlake-evalcost")
    ap.add_argument("-p", dest="overrides", action="append", default=[], help="eval.key=value for every run")
    ap.add_argument("--eval-only", metavar="LAKE", help="time the evaluation of each case's table in LAKE")
    ap.add_argument("--compare-warm", metavar="LAKE", help="node classification cold vs warm-started fits")
    ap.add_argument("--first-call", metavar="LAKE", help="components in fresh processes, as a fresh worker pays them")
    ap.add_argument("--rounds", type=int, default=3, help="--first-call: alternations of the checkouts")
    ap.add_argument("--cold-numba", action="store_true",
                    help="--first-call: numba not imported before (a worker that ran no numba task)")
    ap.add_argument("--figures-task", action="store_true",
                    help="--first-call: the whole figures task (figures_stage: both components, shared row norms)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.compare_warm:
        for case in a.cases.split(","):
            print(json.dumps(compare_warm(a.compare_warm, case, case_args(case, a.out, a.rmat_edges))), flush=True)
        return 0
    if a.first_call:
        for case in a.cases.split(","):
            first_call(a.first_call, case, case_args(case, a.out, a.rmat_edges), a.checkouts.split(","), a.rounds,
                       a.out, a.cold_numba, a.figures_task)
        return 0
    if a.eval_only:
        for case in a.cases.split(","):
            print(json.dumps(eval_only(a.eval_only, case, case_args(case, a.out, a.rmat_edges), a.overrides)),
                  flush=True)
        return 0
    results = []
    for case in a.cases.split(","):
        args = case_args(case, a.out, a.rmat_edges)
        for i, co in enumerate(a.checkouts.split(",")):
            r = run_case(Path(co), case, args, os.path.join(a.out, f"lake-{i}"), a.overrides)
            results.append(r)
            print(f"{case:<12} {Path(co).name:<12} rows {r['rows']:>9,}  other stages {r['other_s']:>7.1f}s  "
                  f"evaluate {r['evaluate_s']:>7.1f}s  ratio {r['ratio']:.3f}  CPU-s other {r['other_cpu_s']} "
                  f"evaluate {r['evaluate_cpu_s']} ratio {r['cpu_ratio']}  components {r['components_s']}  "
                  f"mAP {r['map']}  Micro-F1 {r['micro_f1']}" + (f"\n    timeline {r['timeline']}" if r['timeline'] else "")
                  + f"\n    evaluate CPU-s by process {r['evaluate_cpu_by_process']}",
                  flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
