"""The recorder's memory per task (tasks/object_sizes.py `task_memory`, the `mem` of each record):
issue 17 bounds each worker's peak memory, so the peak must be per task (a reset high-water mark,
not the process's lifetime peak), and must say which kind of memory made it (the worker's private
heap or mapped object-store pages)."""
from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

MiB = 2**20


def _touched(nbytes: int) -> mmap.mmap:
    """Private anonymous pages that are really in RSS, mapped for this call alone. (A numpy array
    would come from malloc, which in a long-lived process such as the full test run may reuse pages
    already resident from earlier tests, so the RSS would not grow.) close() unmaps them."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    np.frombuffer(m, dtype=np.uint8)[::4096] = 1
    return m


def test_peak_is_per_block_not_per_process():
    from embedlake.tasks.object_sizes import proc_status, task_memory
    big = _touched(160 * MiB)                    # a peak before the block, then unmapped
    big.close()
    with task_memory() as mem:
        small = _touched(24 * MiB)
        time.sleep(0.05)                         # the sampler sees the pages
        small.close()
    assert mem["hwm_reset"] is True
    assert mem["hwm"] >= mem["rss_before"] + 23 * MiB           # the block's own allocation is in its peak
    assert mem["hwm"] < mem["rss_before"] + 120 * MiB           # ... and the 160 MiB of before is not
    assert proc_status()["VmHWM"] >= mem["hwm"]
    assert mem["anon_peak"] >= mem["anon_before"] + 23 * MiB    # sampled: the heap made this peak
    assert mem["own_peak"] >= mem["anon_peak"]
    assert mem["anon"] < mem["anon_peak"] - 20 * MiB            # freed by the end of the block
    assert mem["shmem_peak"] - mem["shmem_before"] < 8 * MiB    # no shared pages were touched


def test_shared_pages_are_counted_apart_from_the_heap():
    from embedlake.tasks.object_sizes import task_memory
    with task_memory() as mem:
        shared = mmap.mmap(-1, 48 * MiB)         # MAP_SHARED | MAP_ANONYMOUS: shmem pages, like the object store
        view = np.frombuffer(shared, dtype=np.uint8)
        view[::4096] = 1
        time.sleep(0.05)
        held = int(view[::4096].sum())
    del view
    shared.close()
    assert held == 48 * MiB // 4096
    assert mem["shmem"] >= mem["shmem_before"] + 47 * MiB       # still mapped at the end of the block
    assert mem["hwm"] >= mem["rss_before"] + 47 * MiB           # in RSS ...
    assert mem["anon_peak"] < mem["anon_before"] + 16 * MiB     # ... but not in the private heap
    assert mem["own_peak"] >= mem["anon_before"] + 47 * MiB     # the block's own peak: heap + its new shared pages


def _worker_code():
    """Worker functions made here so that Ray pickles them by value (the workers cannot import this module)."""
    def allocate(mib):
        a = np.ones(mib * MiB, dtype=np.uint8)
        time.sleep(0.05)
        return int(a[::4096].sum())

    def read(x):
        return int(x[::4096].sum())             # zero-copy: the argument's pages are the store's
    return allocate, read


def test_recorded_tasks_carry_their_memory(ray_session, tmp_path):
    import ray

    from embedlake.tasks.object_sizes import memory_by_stage, read_calls, recording
    from embedlake.tasks.remote import remote
    allocate, read = _worker_code()
    big = np.ones(64 * MiB, dtype=np.uint8)
    with recording(tmp_path / "rec") as rec:
        ref = ray.put(big)
        assert ray.get(remote(allocate, "train", num_cpus=1).remote(96)) == 96 * MiB // 4096
        assert ray.get(remote(read, "walk", num_cpus=1).remote(ref)) == 64 * MiB // 4096
    calls = {c.fn: c for c in read_calls(rec)}
    alloc, rd = calls["allocate"], calls["read"]
    assert alloc.mem["hwm_reset"] and rd.mem["hwm_reset"]
    assert alloc.peak_anon >= alloc.mem["anon_before"] + 95 * MiB and alloc.peak_rss >= 95 * MiB
    assert alloc.peak_own >= alloc.peak_anon
    # the argument is read from the object store: in the worker's RSS as shared pages, not its heap
    assert rd.mem["shmem"] >= 63 * MiB and rd.peak_rss >= rd.mem["shmem"]
    assert rd.peak_anon < rd.mem["anon_before"] + 32 * MiB
    by_stage = memory_by_stage(list(calls.values()))
    assert by_stage["train"]["anon_fn"] == "allocate" and by_stage["train"]["anon"] == alloc.peak_anon
    assert by_stage["train"]["own_fn"] == "allocate" and by_stage["train"]["own"] == alloc.peak_own
    assert by_stage["walk"]["rss_fn"] == "read" and by_stage["walk"]["rss_mem"]["shmem"] == rd.mem["shmem"]


def test_records_without_memory_still_read(tmp_path):
    """Records written before the memory fields (old bench output) read back with an empty `mem`."""
    from embedlake.tasks.object_sizes import memory_by_stage, read_calls
    (tmp_path / "objects-h-1.jsonl").write_text(
        '{"stage":"walk","fn":"f","args":[8],"kwargs":{},"results":[4],"node":null,"pid":1,"wall_s":0.1}\n')
    (c,) = read_calls(tmp_path)
    assert c.mem == {} and c.peak_rss == 0 and c.peak_anon == 0 and c.peak_own == 0 and memory_by_stage([c]) == {}


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


def test_max_calls_one_runs_each_call_in_a_worker_that_then_exits(ray_session):
    """remote(..., max_calls=1) (tasks/remote.py; Ray takes max_calls only in ray.remote itself): each
    call gets a worker process of its own, which exits after it, so no later task inherits its heap."""
    import os
    import time

    import psutil
    import ray

    from embedlake.tasks.remote import remote
    once = remote(os.getpid, "publish", num_cpus=1, max_calls=1)
    first, second = ray.get(once.remote()), ray.get(once.remote())
    assert first != second
    deadline = time.monotonic() + 30
    while psutil.pid_exists(first) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(first)


TASK_HEAP_CHILD = """
import json, resource
import numpy as np
from embedlake.workers.heap import task_heap

def faults(arrays=4):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(arrays):
        a = np.ones(3 << 20, dtype=np.uint8)     # over the workers' 1 MiB threshold, under numpy's huge pages
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

before = faults()
with task_heap():
    faults(1)                                   # the heap grows once
    inside = faults()
after = faults()
print(json.dumps([before, inside, after]))
"""


def test_task_heap_reuses_freed_pages_within_and_gives_the_workers_thresholds_back():
    """`heap.task_heap` (the figures task runs inside it): in a process with the workers' allocator
    settings each freed 3 MiB array is unmapped and the next one faulted in page by page (768 pages);
    inside, the heap keeps the pages and the next array reuses them; after, the workers' thresholds
    hold again."""
    import json
    import os
    import subprocess
    import sys

    from embedlake.tasks.runtime import WORKER_ALLOCATOR_ENV
    out = subprocess.run([sys.executable, "-c", TASK_HEAP_CHILD], env=dict(os.environ, **WORKER_ALLOCATOR_ENV),
                         capture_output=True, text=True, check=True)
    before, inside, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before >= 4 * 700 and after >= 4 * 700, (before, inside, after)
    assert inside < 100, (before, inside, after)
