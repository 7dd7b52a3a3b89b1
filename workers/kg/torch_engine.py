"""The torch kernel of knowledge-graph training (GPUs; the CPU device in tests): the same chunks,
shared negatives, losses, regulariser and optimisers as the numba kernel (kernels.py / train.py),
written as dense tensor operations with autograd, so one chunk's update matches the numba one's
up to float rounding (tests/test_kg.py checks it).

A chunk's gradient is dense over the tables, but rows no chunk touched get a zero gradient, and
zero leaves Adagrad's accumulators and the rows unchanged: the update equals the row-sparse one.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from embedlake.workers.kg.kernels import TrainSettings, TrainState
from embedlake.workers.kg.models import DOT, L1, L2, TAIL, KGModel
from embedlake.workers.kg.train import negative_sampler


def pick_device(device: str) -> torch.device:
    """auto: cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def queries(model: KGModel, ent, rel, anchors, rels, side: int):
    """The queries of models.build_queries, as a tensor expression."""
    a, r = ent[anchors], rel[rels]
    if model.name == "transe":
        return a + r if side == TAIL else a - r
    if model.name == "distmult":
        return a * r
    k = model.dim // 2
    if model.name == "complex":
        c_re, c_im = r[:, :k], r[:, k:]
    else:
        c_re, c_im = torch.cos(r), torch.sin(r)
    if side != TAIL:
        c_im = -c_im
    a_re, a_im = a[:, :k], a[:, k:]
    return torch.cat([a_re * c_re - a_im * c_im, a_re * c_im + a_im * c_re], dim=1)


def distance(model: KGModel, diff):
    """dist over the last axis of q - e, with the numba kernel's epsilons."""
    if model.kind == L1:
        return diff.abs().sum(-1)
    if model.kind == L2:
        return torch.sqrt((diff * diff).sum(-1) + 1e-9)
    k = model.dim // 2
    return torch.sqrt(diff[..., :k] ** 2 + diff[..., k:] ** 2 + 1e-9).sum(-1)


def scores(model: KGModel, q, cand, pairwise: bool):
    """B x N block (pairwise False) or the B scores of q_i against cand_i (pairwise True)."""
    if model.kind == DOT:
        return (q * cand).sum(1) if pairwise else q @ cand.T
    diff = q - cand if pairwise else q[:, None, :] - cand[None, :, :]
    return model.gamma - distance(model, diff)


def side_loss(model: KGModel, ent, rel, anchors, rels, targets, negs, side: int, s: TrainSettings):
    """Summed loss of one side of a chunk (kernels.loss_grads' three losses, true entity masked)."""
    q = queries(model, ent, rel, anchors, rels, side)
    pos = scores(model, q, ent[targets], True)
    neg = scores(model, q, ent[negs], False)
    keep = negs[None, :] != targets[:, None]
    if s.loss == "softmax":
        logits = torch.cat([pos[:, None], neg.masked_fill(~keep, float("-inf"))], dim=1)
        return (torch.logsumexp(logits, dim=1) - pos).sum()
    if s.loss == "logistic":
        return torch.nn.functional.softplus(-pos).sum() + (torch.nn.functional.softplus(neg) * keep).sum() / negs.shape[0]
    return (torch.clamp(s.margin - pos[:, None] + neg, min=0.0) * keep).sum()


def regulariser(model: KGModel, ent, rel, h, r, t, s: TrainSettings):
    """N3 / L2 on the positives' rows, as train.reg_grads differentiates it."""
    if s.reg_weight <= 0 or s.regularizer == "none":
        return ent.new_zeros(())
    rows = [(ent[h], model.complex), (ent[t], model.complex)]
    if model.name != "rotate":
        rows.append((rel[r], model.name == "complex"))
    total = ent.new_zeros(())
    for x, cplx in rows:
        if s.regularizer == "l2":
            total = total + (x * x).sum()
        elif cplx:
            k = x.shape[1] // 2
            total = total + torch.sqrt(x[:, :k] ** 2 + x[:, k:] ** 2).pow(3).sum()
        else:
            total = total + x.abs().pow(3).sum()
    return s.reg_weight * total


def step(table, acc, grad, lr: float, optimizer: str) -> None:
    """One optimiser step on a whole table (untouched rows have a zero gradient: unchanged)."""
    if optimizer == "sgd":
        table -= lr * grad
    elif optimizer == "adagrad" or acc.dim() == 2:
        acc += grad * grad
        table -= lr * grad / (torch.sqrt(acc) + 1e-10)
    else:                                   # row-wise: acc[row] += mean(g^2)
        acc += (grad * grad).mean(1)
        table -= (lr / (torch.sqrt(acc) + 1e-10))[:, None] * grad


class TorchTrainer:
    """Tables and Adagrad state on a torch device; `chunk` is train.train_chunk's counterpart."""

    def __init__(self, model: KGModel, st: TrainState, s: TrainSettings, device: str = "cpu"):
        self.model, self.s, self.dev = model, s, pick_device(device)
        self.ent = torch.from_numpy(np.array(st.ent)).to(self.dev).requires_grad_(True)
        self.rel = torch.from_numpy(np.array(st.rel)).to(self.dev).requires_grad_(True)
        self.ent_acc = torch.from_numpy(np.array(st.ent_acc)).to(self.dev)
        self.rel_acc = torch.from_numpy(np.array(st.rel_acc)).to(self.dev)

    def chunk(self, h, r, t, negs_tail, negs_head) -> float:
        m, s = self.model, self.s
        h, r, t, nt, nh = (torch.as_tensor(x, dtype=torch.int64, device=self.dev)
                           for x in (h, r, t, negs_tail, negs_head))
        loss = side_loss(m, self.ent, self.rel, h, r, t, nt, TAIL, s) + \
            side_loss(m, self.ent, self.rel, t, r, h, nh, 1 - TAIL, s)
        total = loss + regulariser(m, self.ent, self.rel, h, r, t, s)
        g_ent, g_rel = torch.autograd.grad(total, [self.ent, self.rel])
        with torch.no_grad():
            step(self.ent, self.ent_acc, g_ent, s.lr, s.optimizer)
            step(self.rel, self.rel_acc, g_rel, s.lr, "adagrad" if s.optimizer == "row_adagrad" else s.optimizer)
        return float(loss.detach())

    def write_back(self, st: TrainState) -> None:
        """Copy the tables and accumulators into the numpy state (checkpoints, publishing)."""
        for name in ("ent", "rel", "ent_acc", "rel_acc"):
            getattr(st, name)[...] = getattr(self, name).detach().cpu().numpy()


def train_torch(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, degree=None,
                on_epoch: Callable | None = None, device: str = "cpu", threads: int = 1) -> TrainState:
    """train.train with the torch kernel: the same shuffles and negative draws (numpy, seeded by
    (seed, epoch)), so only the arithmetic differs. On the CPU device torch uses `threads` threads
    (the CPUs the worker holds: more only spin against each other)."""
    trainer = TorchTrainer(model, st, s, device)
    if trainer.dev.type == "cpu":
        torch.set_num_threads(threads)
    draw = negative_sampler(st.ent.shape[0], s, degree)
    while st.epoch < s.epochs:
        t0 = time.perf_counter()
        rng = np.random.default_rng([s.seed, st.epoch])
        order = rng.permutation(triples.shape[0])
        total = 0.0
        for lo in range(0, order.shape[0], s.batch):
            chunk = triples[order[lo:lo + s.batch]]
            total += trainer.chunk(chunk[:, 0], chunk[:, 1], chunk[:, 2], draw(rng), draw(rng))
        trainer.write_back(st)
        st.epoch += 1
        seconds = time.perf_counter() - t0
        info = {"epoch": st.epoch, "loss": round(total / max(2 * triples.shape[0], 1), 6),
                "seconds": round(seconds, 3), "triples_per_s": round(triples.shape[0] / max(seconds, 1e-9), 1)}
        st.history.append(info)
        if on_epoch is not None:
            on_epoch(st, info)
    return st
