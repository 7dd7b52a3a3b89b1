"""Where a task runs: on the node whose object store holds its big input.

Why a module of its own: the graph, FastRP and evaluate tasks all place per-shard work this way,
and tasks/graph.py imports tasks/evaluate.py, so the one helper cannot live in either."""
from __future__ import annotations


def shard_placements(shards: list) -> list[dict]:
    """Per shard, the Ray options that run a task on the node whose object store holds the shard's
    CSR rows (where the ingest task that built them ran), so a chain of tasks over one shard reads
    its rows locally instead of pulling them across the network for every task."""
    return ref_placements([s.csr_ref for s in shards])


def ref_placements(refs: list) -> list[dict]:
    """Per object ref, the Ray options that run a task on a node whose object store holds it.

    Soft node affinity: a task waits for that node's CPU, and runs elsewhere only if the node is
    gone. When an object is on several nodes, the node with the fewest tasks placed so far is
    taken. {} (Ray places the task) for an object on no node with CPUs: an object the driver put
    lives on the head node, and an object under 100 KB lives in its owner's memory."""
    import ray
    from ray.experimental import get_object_locations
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    with_cpus = {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0}
    where = get_object_locations(list(refs))
    placed: dict[str, int] = {}
    out = []
    for ref in refs:
        nodes = [n for n in (where.get(ref) or {}).get("node_ids") or [] if n in with_cpus]
        if not nodes:
            out.append({})
            continue
        node = min(nodes, key=lambda n: placed.get(n, 0))
        placed[node] = placed.get(node, 0) + 1
        out.append({"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)})
    return out
