"""How shard owners (workers/graph/sharded_walks.py ShardWalker, Ray actors made in tasks/graph.py)
send each other their messages during the walk rounds: over direct connections between the owner
processes, not Ray calls.

Why not Ray actor calls: a round sends S (S - 1) messages, and an actor call cost the owners about
1.3 ms of CPU per message (20M-edge R-MAT, S = 8, the 4-node test bed: 1.4 CPU s of Ray's own work
per walk in the owner processes, with the messages as raw bytes) where a socket send and receive
of the same bytes costs a fraction of that (docs/scaling.md section 9, "Owner messages over direct
connections"). Ray still starts, places, watches and stops the owners; the driver opens the
connections (`open_inboxes`, through `__ray_call__`, so the walk engine in workers/ knows no
transport) and hands every owner a PeerMail to send with.

A module of its own, importing nothing heavy: the owners unpickle a PeerMail when the rounds
begin, which imports this module in their processes. When the mail object lived in tasks/graph.py,
that import pulled in Prefect: 1-5 CPU s per owner (py-spy, 2M-edge bench under load).
"""
from __future__ import annotations

import os
import queue
import threading
from multiprocessing.connection import Client, Listener, wait


class PeerInbox:
    """The receiving end of one owner for one walk: a listener that takes one connection from each
    of the other `senders` owners, then a thread that hands every message (`pack_message` bytes) to
    `deliver` as it comes. Messages of one sender come in the order sent; those of different
    senders in any order (the walker's mailbox sorts them by round). A connection closed before the
    walk ends (its owner died) only stops that sender's messages: the driver sees the dead owner
    (its `finished` fails) and walks again with new owners."""

    def __init__(self, deliver, senders: int, host: str, authkey: bytes):
        self.listener = Listener((host, 0), authkey=authkey)
        self.address = self.listener.address
        self.thread = threading.Thread(target=self._serve, args=(deliver, senders), daemon=True,
                                       name="peer-inbox")
        self.thread.start()

    def _serve(self, deliver, senders: int) -> None:
        try:
            conns = [self.listener.accept() for _ in range(senders)]
        finally:
            self.listener.close()
        while conns:
            for conn in wait(conns):
                try:
                    message = conn.recv_bytes()
                except (EOFError, OSError):
                    conns.remove(conn)
                    conn.close()
                    continue
                try:
                    deliver(message)
                except BaseException:        # the walker keeps it for `finished`; stop reading
                    for c in conns:
                        c.close()
                    return


def open_inbox(walker, senders: int, authkey: bytes) -> tuple:
    """Run in a shard owner (`actor.__ray_call__`): its PeerInbox for the walk it has begun (its
    `deliver` receives), on its node's address; returns the address the others connect to."""
    import ray
    walker.peer_inbox = PeerInbox(walker.deliver, senders, ray.util.get_node_ip_address(), authkey)
    return walker.peer_inbox.address


def close_mail(walker) -> None:
    """Run in a shard owner after every owner's `finished`: its PeerMail sends what is queued and
    closes its connections (the others' inbox threads then end)."""
    if walker.mail is not None and hasattr(walker.mail, "close"):
        walker.mail.close()


def open_inboxes(owners: list) -> PeerMail:
    """One PeerInbox per owner for the walk they have begun (`start` / `load` done); the PeerMail to
    hand each of them (`ShardWalker.begin`)."""
    import ray
    authkey = os.urandom(16)
    addresses = ray.get([o.__ray_call__.remote(open_inbox, len(owners) - 1, authkey) for o in owners])
    return PeerMail(addresses, authkey)


class PeerMail:
    """What a shard owner sends its messages with (ShardWalker.begin's `mail`): `mail(shard, message)`
    queues the message (a `pack_message` buffer) for a thread of its own, which connects to each
    owner's inbox at its first message and sends the buffer as it is. The thread that plays the rounds never waits on a
    send (two owners sending each other large messages from the threads that also read theirs
    would wait for each other for ever once the socket buffers fill)."""

    def __init__(self, addresses: list, authkey: bytes):
        self.addresses, self.authkey = addresses, authkey
        self.outbox: queue.SimpleQueue | None = None
        self.thread: threading.Thread | None = None

    def __getstate__(self):
        return {"addresses": self.addresses, "authkey": self.authkey}

    def __setstate__(self, state):
        self.__init__(state["addresses"], state["authkey"])

    def __call__(self, shard: int, message) -> None:
        if self.outbox is None:
            self.outbox = queue.SimpleQueue()
            self.thread = threading.Thread(target=self._send_all, daemon=True, name="peer-mail")
            self.thread.start()
        self.outbox.put((shard, message))

    def close(self) -> None:
        """Send what is queued, then close the connections (idempotent)."""
        if self.outbox is not None:
            self.outbox.put(None)
            self.thread.join()
            self.outbox = None

    def _send_all(self) -> None:
        conns: dict[int, object] = {}
        try:
            while (item := self.outbox.get()) is not None:
                shard, message = item
                if shard not in conns:
                    conns[shard] = Client(tuple(self.addresses[shard]), authkey=self.authkey)
                conns[shard].send_bytes(message)
        finally:
            for conn in conns.values():
                conn.close()
