"""Skip-gram with negative sampling in torch: the GPU kernel (runs on the CPU device too, in tests).

Same maths, config and return contract as ``workers.skipgram.train_sgns`` (word2vec skip-gram,
dynamic window 1..window per centre, unigram ** ns_exponent noise, word2vec subsampling, linear
lr decay over all epochs, negatives shared by the contexts of one centre). A batch is
``batch_size`` centres; each becomes a [2*window x (1 + negatives)] block of logits, padded and
masked where the dynamic window or the sentence ends. Gradients are written by hand (no autograd):
gather rows with ``index_select``, two ``bmm`` for the logits and the two gradients, and scatter
with ``index_add_`` (STACK.md: 1.4x faster than autograd with sparse embeddings on the CPU,
``index_put_(accumulate=True)`` is 7x slower). All centres of a batch read the tables before any
of them writes (minibatch SGD); duplicate rows in a batch add their updates.

Random draws come from a torch.Generator on the device seeded from (seed, epoch, chunk), so a run
is reproducible on one device with a fixed thread count; it does not draw the same numbers as the
numba kernel (quality, not bits, is what the two share).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from embedlake.workers.train.sgns_parts import keep_thresholds, sentence_chunks
from embedlake.workers.train.skipgram import prepare


def resolve_device(device: str = "auto") -> torch.device:
    """auto = cuda if available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _noise_probs(counts: np.ndarray, ns_exponent: float) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(c > 0, np.power(np.maximum(c, 1e-300), ns_exponent), 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(c), 1.0 / max(1, len(c)))


@dataclass
class _Step:
    """What every batch of one torch run reads: the tables (trained in place), the noise and keep
    distributions, the window offsets, the labels and the run's one random generator, all on `dev`."""
    dev: torch.device
    W_in: torch.Tensor
    W_out: torch.Tensor
    noise: torch.Tensor
    keep_p: torch.Tensor
    offs: torch.Tensor                 # context offsets -window..window without 0: [2W]
    absoff: torch.Tensor
    label: torch.Tensor                # 1 for the centre, 0 for the negatives: [K+1]
    gen: torch.Generator
    window: int
    negatives: int
    lr: float
    min_lr: float
    sample: float
    per_epoch: int
    total_work: float
    first_pos: int                     # offsets[0]: stream positions count from there


def train_sgns_torch(tokens, offsets, vocab_size, *, counts=None, dim=128, window=10, negatives=5,
                     ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0, seed=0, threads=0,
                     init=None, progress: Callable[[int, int, float], None] | None = None,
                     device: str = "auto", batch_size: int | None = None,
                     chunk_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """SGNS in torch; arguments and return value as ``train_sgns`` (W_in, W_out as numpy float32).

    device: auto | cpu | cuda | cuda:N. batch_size: centres per step (default 1024 on the CPU,
    16384 on a GPU). threads: torch CPU threads while training (0 = leave torch's setting).
    """
    if window < 1 or negatives < 0 or epochs < 1 or dim < 1:
        raise ValueError("window >= 1, negatives >= 0, epochs >= 1, dim >= 1 required")
    dev = resolve_device(device)
    tokens, offsets, counts, W_in_np, W_out_np = prepare(tokens, offsets, vocab_size, counts, dim, init, seed)
    if batch_size is None:
        batch_size = 16384 if dev.type == "cuda" else 1024
    S = len(offsets) - 1
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    real_tokens = int(np.count_nonzero(tokens[offsets[0]:offsets[-1]] >= 0)) if S else 0
    total_work = float(max(1, per_epoch * epochs))
    if chunk_tokens is None:
        chunk_tokens = max(65536, per_epoch // 100)
    chunks = sentence_chunks(offsets, chunk_tokens)

    prev_threads = torch.get_num_threads()
    if threads and dev.type == "cpu":
        torch.set_num_threads(int(threads))
    t_setup = time.perf_counter()
    st = _start(dev, W_in_np, W_out_np, counts, ns_exponent, sample, window, negatives, lr, min_lr, per_epoch,
                total_work, int(offsets[0]))
    t_setup = time.perf_counter() - t_setup
    try:
        loss_log, total_pairs, total_kept, seconds = _train_epochs(st, tokens, offsets, chunks, epochs, seed,
                                                                   batch_size, progress)
        used_threads = torch.get_num_threads()
    finally:
        if threads and dev.type == "cpu":
            torch.set_num_threads(prev_threads)
    loss_first, loss_last = _edge_losses(loss_log, total_work)
    tok_total = real_tokens * epochs
    stats = {
        "tokens": tok_total, "tokens_trained": total_kept, "pairs": total_pairs, "seconds": seconds,
        "tokens_per_s": tok_total / seconds if seconds > 0 else float("nan"),
        "pairs_per_s": total_pairs / seconds if seconds > 0 else float("nan"),
        "loss_first": loss_first, "loss_last": loss_last, "compile_s": t_setup,
        "threads": used_threads if dev.type == "cpu" else 0, "chunks": len(chunks) * epochs, "engine": "torch",
        "device": str(dev), "batch_size": batch_size,
    }
    return st.W_in.cpu().numpy(), st.W_out.cpu().numpy(), stats


def _start(dev, W_in_np, W_out_np, counts, ns_exponent, sample, window, negatives, lr, min_lr, per_epoch,
           total_work, first_pos) -> _Step:
    """Move the tables to the device and build what every batch reads (timed as the setup)."""
    offs = torch.arange(-window, window + 1, device=dev)
    offs = offs[offs != 0]
    K1 = negatives + 1
    label = torch.zeros(K1, device=dev)
    label[0] = 1.0
    return _Step(
        dev=dev, W_in=torch.from_numpy(W_in_np).to(dev), W_out=torch.from_numpy(W_out_np).to(dev),
        noise=torch.from_numpy(_noise_probs(counts, ns_exponent)).to(dev, torch.float32),
        keep_p=torch.from_numpy(keep_thresholds(counts, sample).astype(np.float64) / 2.0 ** 32).to(dev, torch.float32),
        offs=offs, absoff=offs.abs(), label=label, gen=torch.Generator(device=dev), window=window,
        negatives=negatives, lr=lr, min_lr=min_lr, sample=sample, per_epoch=per_epoch, total_work=total_work,
        first_pos=first_pos)


def _train_epochs(st: _Step, tokens, offsets, chunks, epochs: int, seed: int, batch_size: int, progress
                  ) -> tuple[list[tuple[int, float, int]], int, int, float]:
    """Every epoch, chunk after chunk (progress reported between chunks). Returns the loss log
    [(work position at chunk end, loss sum, pairs)], the pair and kept-token totals and the seconds
    (device work finished: the GPU is synchronised before the clock stops)."""
    loss_log: list[tuple[int, float, int]] = []
    total_pairs = 0
    total_kept = 0
    done = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        for ci, (lo, hi) in enumerate(chunks):
            a, b = int(offsets[lo]), int(offsets[hi])
            st.gen.manual_seed((int(seed) * 1_000_003 + ep * 7_919 + ci) % (2 ** 63))
            cl, cpairs, kept = _train_chunk(st, tokens, offsets, lo, hi, ep, batch_size)
            total_kept += kept
            total_pairs += cpairs
            done += b - a
            loss_log.append((ep * st.per_epoch + b - st.first_pos, cl, cpairs))
            if progress is not None:
                progress(done, int(st.total_work), cl / cpairs if cpairs else float("nan"))
    if st.dev.type == "cuda":
        torch.cuda.synchronize(st.dev)
    return loss_log, total_pairs, total_kept, time.perf_counter() - t0


def _train_chunk(st: _Step, tokens, offsets, lo: int, hi: int, ep: int, batch_size: int) -> tuple[float, int, int]:
    """Sentences [lo, hi) of epoch `ep`: subsample (one draw per token), then batches of centres.
    Returns (loss sum, pairs, kept tokens) of the chunk."""
    dev = st.dev
    a, b = int(offsets[lo]), int(offsets[hi])
    tok = torch.from_numpy(tokens[a:b]).to(dev, torch.int64)
    sid = torch.from_numpy(np.repeat(np.arange(hi - lo), np.diff(offsets[lo:hi + 1]))).to(dev)
    pos = torch.arange(a, b, device=dev)
    m = tok >= 0
    if st.sample > 0:
        u = torch.rand(tok.shape[0], generator=st.gen, device=dev)
        m &= u < st.keep_p[tok.clamp_min(0)]
    tok, sid, pos = tok[m], sid[m], pos[m]
    n = tok.shape[0]
    c_loss = torch.zeros((), device=dev, dtype=torch.float64)
    c_pairs = torch.zeros((), device=dev, dtype=torch.int64)
    for i0 in range(0, n, batch_size):
        loss, pairs = _train_batch(st, tok, sid, pos, i0, min(n, i0 + batch_size), ep)
        c_loss += loss
        c_pairs += pairs
    return float(c_loss), int(c_pairs), n


def _train_batch(st: _Step, tok, sid, pos, i0: int, i1: int, ep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One minibatch of centres tok[i0:i1]: every centre reads the tables before any writes; the
    gradients are written by hand (two bmm) and scattered with index_add_. Returns the batch's
    loss sum (float64) and number of (context, centre) pairs."""
    dev, gen, window, negatives = st.dev, st.gen, st.window, st.negatives
    n = tok.shape[0]
    N = i1 - i0
    K1 = negatives + 1
    dim = st.W_in.shape[1]
    centre = tok[i0:i1]
    p = torch.arange(i0, i1, device=dev)
    bw = torch.randint(1, window + 1, (N,), generator=gen, device=dev)
    cp = p[:, None] + st.offs[None, :]                                # [N, 2W]
    cpc = cp.clamp(0, n - 1)
    cmask = (st.absoff[None, :] <= bw[:, None]) & (cp >= 0) & (cp < n) & (sid[cpc] == sid[i0:i1, None])
    ctx = tok[cpc]
    negs = torch.multinomial(st.noise, N * negatives, replacement=True, generator=gen).view(N, negatives)
    outs = torch.cat([centre[:, None], negs], 1)                      # [N, K+1]
    omask = torch.ones(N, K1, dtype=torch.bool, device=dev)
    omask[:, 1:] = negs != centre[:, None]
    step_lr = (st.lr - (st.lr - st.min_lr) * (ep * st.per_epoch + pos[i0:i1] - st.first_pos) / st.total_work)
    step_lr = step_lr.clamp_min(st.min_lr).to(torch.float32)
    Ci = st.W_in.index_select(0, ctx.view(-1)).view(N, -1, dim)      # [N, 2W, d]
    Oo = st.W_out.index_select(0, outs.view(-1)).view(N, K1, dim)    # [N, K+1, d]
    logits = torch.bmm(Ci, Oo.transpose(1, 2))                        # [N, 2W, K+1]
    mask = (cmask[:, :, None] & omask[:, None, :]).to(torch.float32)
    g = (st.label - torch.sigmoid(logits)) * mask * step_lr[:, None, None]
    sgn = 1.0 - 2.0 * st.label                                        # -1 positive, +1 negative
    loss = (torch.nn.functional.softplus(logits * sgn) * mask).sum(dtype=torch.float64)
    dIn = torch.bmm(g, Oo)                                            # [N, 2W, d]
    dOut = torch.bmm(g.transpose(1, 2), Ci)                           # [N, K+1, d]
    st.W_out.index_add_(0, outs.view(-1), dOut.view(-1, dim))
    st.W_in.index_add_(0, ctx.view(-1), dIn.view(-1, dim))
    return loss, cmask.sum()


def _edge_losses(loss_log: list[tuple[int, float, int]], total_work: float) -> tuple[float, float]:
    """Mean loss per pair over the chunks of the first / last 5 % of the work (whether training moved)."""
    if not loss_log:
        return float("nan"), float("nan")
    frac = 0.05 * total_work

    def edge(sel):
        ls = sum(l for (_, l, _), s in zip(loss_log, sel) if s)
        ps = sum(q for (_, _, q), s in zip(loss_log, sel) if s)
        return ls / ps if ps else float("nan")
    ends = [e for e, _, _ in loss_log]
    starts = [0] + ends[:-1]
    return edge([s < frac for s in starts]), edge([e > total_work - frac for e in ends])
