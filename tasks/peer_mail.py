"""How shard owners (workers/graph/sharded_walks.py ShardWalker, Ray actors made in tasks/graph.py)
send each other their messages during the walk rounds.

A module of its own, importing nothing heavy: the owners unpickle a PeerMail when the rounds
begin, which imports this module in their processes. When it lived in tasks/graph.py, that import
pulled in Prefect: 1-5 CPU s per owner (measured with py-spy, 2M-edge bench under load), more than
the rounds themselves.
"""
from __future__ import annotations

# Slices of a message array, each small enough to travel inline with the actor call that carries it
# (Ray's max_direct_call_object_size is 100 KiB): no object-store object, no raylet transfer, no
# location look-up. Ray puts arguments in the object store anyway past 10 MB per call
# (task_rpc_inlined_bytes_limit): larger messages still arrive, as objects.
INLINE_PIECE_BYTES = 96 * 1024


class PeerMail:
    """What a shard owner sends its messages with (ShardWalker.begin's `mail`): an actor call
    `deliver` on the destination shard's owner, its array cut in inline slices. Shard owners talk
    to each other directly: the driver makes no call per round and owns no walker box."""

    def __init__(self, actors: list):
        self.actors = actors

    def __call__(self, shard: int, kind: int, rnd: int, sender: int, in_flight: int, *arrays) -> None:
        sliced = [inline_pieces(a) for a in arrays]
        self.actors[shard].deliver.remote(kind, rnd, sender, in_flight, tuple(len(p) for p in sliced),
                                          *[piece for p in sliced for piece in p])


def inline_pieces(array) -> list:
    """`array` in slices of whole rows of at most INLINE_PIECE_BYTES (none for an empty array)."""
    rows = max(1, INLINE_PIECE_BYTES // max(1, array.nbytes // max(1, len(array))))
    return [array[i:i + rows] for i in range(0, len(array), rows)]
