"""How shard owners (workers/graph/sharded_walks.py ShardWalker, Ray actors made in tasks/graph.py)
send each other their messages during the walk rounds.

A module of its own, importing nothing heavy: the owners unpickle a PeerMail when the rounds
begin, which imports this module in their processes. When it lived in tasks/graph.py, that import
pulled in Prefect: 1-5 CPU s per owner (measured with py-spy, 2M-edge bench under load), more than
the rounds themselves.
"""
from __future__ import annotations


class PeerMail:
    """What a shard owner sends its messages with (ShardWalker.begin's `mail`): an actor call
    `deliver(*pieces)` on the destination shard's owner, the message's bytes pieces as its
    arguments (sharded_walks.pack_message cuts them so that each travels inline with the call).
    Shard owners talk to each other directly: the driver makes no call per round and owns no
    walker box. The call has no return value (num_returns=0): no object for Ray to create, report
    back and free per message; a failed delivery shows as the receiver's failure (its `finished`)."""

    def __init__(self, actors: list):
        self.actors = actors
        self.deliver = None

    def __getstate__(self):
        return {"actors": self.actors}

    def __setstate__(self, state):
        self.__init__(state["actors"])

    def __call__(self, shard: int, pieces: list) -> None:
        if self.deliver is None:
            self.deliver = [a.deliver.options(num_returns=0) for a in self.actors]
        self.deliver[shard].remote(*pieces)
