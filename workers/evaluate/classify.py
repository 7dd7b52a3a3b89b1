"""Node classification under the DeepWalk protocol, with our own one-vs-rest logistic regression.

Why our own solver: scikit-learn's ``OneVsRestClassifier(LogisticRegression(solver="liblinear"))``
fits one label at a time in a single thread and takes minutes on BlogCatalog (39 labels x 9
fits). Every one-vs-rest problem shares the same design matrix, so we fit all labels at once
with a batched, preconditioned Newton-CG (the method liblinear's TRON uses, but vectorised over
labels: each CG step is two dense matrix products). The preconditioner for label l is
``I + C * mean(D_l) * X^T X`` (D_l = the Hessian weights), applied through one eigendecomposition
of the shared Gram matrix; it captures the ill-conditioning that comes from X itself and cuts the
CG steps about threefold against a diagonal preconditioner. The objective is exactly
liblinear's primal L2-regularised logistic regression, C = 1, with the intercept appended as a
constant-1 feature that is regularised like the weights (liblinear's ``intercept_scaling=1``),
so the figures agree with scikit-learn's to well within 0.01 F1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass

import numpy as np

from embedlake.workers.evaluate.rows import TableRows, TransposedRows, row_norms, unit_rows


def blas_threads(threads: int | None):
    """Context limiting BLAS threads (threadpoolctl, when installed; otherwise a no-op).

    Why: the solver's products are tall and skinny (n x d times d x labels); multi-threaded
    OpenBLAS spends more CPU spinning than computing on them. On BlogCatalog one thread took
    2.1 CPU-s for the whole protocol against 7.0 CPU-s with two (and no more wall time), and
    on a shared machine the spinning threads also slow everyone else down. None = leave as is.
    The controller is built once per process (`blas_controller`), and not at all when the
    environment already holds BLAS to ``threads`` (`environment_blas_threads`)."""
    if not threads or environment_blas_threads() <= threads:
        return contextlib.nullcontext()
    controller = blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=threads, user_api="blas")


def environment_blas_threads() -> int:
    """The BLAS threads the environment sets, as OpenBLAS reads it when it loads:
    OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS (a large number when neither is a positive integer).

    Why: a Ray worker starts with OMP_NUM_THREADS = its task's CPUs (1 for the evaluate tasks:
    its OpenBLAS runs one thread, checked with threadpoolctl in a worker), so limiting again is a
    no-op whose first call scans every library the worker has loaded: 20 ms of a fresh worker's
    140 ms of node classification on deezer_europe (issue 22, eighth round). A process that
    raises its BLAS threads after loading while its environment says fewer only runs slower."""
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(key, "").strip()
        if value:
            return int(value) if value.isdigit() and int(value) > 0 else 1 << 30
    return 1 << 30


@functools.cache
def blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded with numpy (None without threadpoolctl).

    Why once: ``threadpool_limits`` scans every loaded shared library on each call; in a Ray worker
    (numba, pyarrow, polars loaded) that was 1.3 ms a call, six calls per node classification
    (8 ms of deezer_europe's 190, issue 22 eighth round); ``controller.limit`` reuses the scan.
    It knows the libraries loaded when it is built (numpy's, which runs the solver's products, is
    always among them); a BLAS loaded later (torch's, scipy's) is not limited by it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


# ---------------------------------------------------------------------------------------------
# batched L2 logistic regression (liblinear primal objective)
# ---------------------------------------------------------------------------------------------

SKINNY_COLUMNS = 4


def skinny_product(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A @ B (into ``out`` when given), as one matrix-vector product per column of B when it has
    2 to ``SKINNY_COLUMNS`` columns (a result allocated here is then column-major).

    Why: OpenBLAS's gemm copies (packs) the tall design before multiplying it, which a few
    columns do not repay: a 25,452 x 513 float32 design times 2 columns took 9.8 ms as one
    gemm against 2.4 ms per matrix-vector product, and 4 columns were still cheaper one at a
    time (issue 22, eighth round; one OpenBLAS thread). A design read from the table in place
    (`TableRows`, its transpose) makes its own matrix-vector products."""
    if isinstance(A, (TableRows, TransposedRows)):
        return A.product(B, out)
    if not 1 < B.shape[1] <= SKINNY_COLUMNS:
        return np.matmul(A, B, out=out)
    out = np.empty((B.shape[1], A.shape[0]), dtype=np.result_type(A, B)).T if out is None else out
    for j, column in enumerate(np.ascontiguousarray(B.T)):
        np.matmul(A, column, out=out[:, j])
    return out


class Scratch:
    """The n x labels buffers of one fit, allocated on first use and reused by its iterations;
    ``scratch(name, cols, dtype)`` is buffer ``name``'s first ``cols`` columns (the active labels).

    Why: the Ray workers map every array of 1 MiB or more on its own and unmap it when freed
    (tasks/runtime.py), so each n x labels temporary of a multi-label fit (BlogCatalog: 9,280
    training rows x 39 labels, 2.9 MB in float64) was faulted in page by page anew, several per
    CG step and line-search trial: 75,000 page faults and a third of BlogCatalog's node
    classification CPU in a fresh worker (issue 22, eighth round). A two-class fit's buffers
    are n x 1, below that threshold, but the same code serves them.

    ``sized(rows)``: the same buffers for a fit on fewer rows (their first ``rows`` rows), so one
    Scratch of a chain's largest split serves every fit of `split_chain_f1` (issue 22, ninth round:
    each fit's buffers were faulted in anew, BlogCatalog's 12,000 first-touch faults)."""

    def __init__(self, n: int, labels: int, buffers: dict | None = None, rows: int | None = None):
        self.shape, self.buffers = (n, labels), ({} if buffers is None else buffers)
        self.rows = n if rows is None else rows

    def sized(self, rows: int, labels: int) -> Scratch:
        """These buffers for a fit on ``rows`` rows and ``labels`` labels (a new Scratch when larger)."""
        if rows > self.shape[0] or labels > self.shape[1]:
            return Scratch(rows, labels)
        return Scratch(*self.shape, buffers=self.buffers, rows=rows)

    def __call__(self, name: str, cols: int, dtype=np.float64) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        if key not in self.buffers:
            self.buffers[key] = np.empty(self.shape, dtype=dtype)
        return self.buffers[key][:self.rows, :cols]


def _times(Xa, Xh, W):
    """X @ W in float64: through the float64 design Xa, or, when there is none (Xa None: a
    `RepeatDesign`), through the float32 one with W rounded to float32 (see `RepeatDesign`)."""
    return Xa @ W if Xa is not None else skinny_product(Xh, W.astype(np.float32)).astype(np.float64)


def _times_t(Xa, Xh, V, scratch: Scratch | None = None):
    """X.T @ V in float64, as `_times` (V rounded to float32 in ``scratch``'s buffer when given)."""
    if Xa is not None:
        return Xa.T @ V
    if isinstance(Xh, TableRows):                  # its kernel rounds V itself and sums into float64
        return Xh.T.product(V)
    V32 = V.astype(np.float32) if scratch is None else scratch("v32", V.shape[1], np.float32)
    if scratch is not None:
        np.copyto(V32, V, casting="same_kind")
    return skinny_product(Xh.T, V32).astype(np.float64)


def _loss_grad(Xa, Xh, S, W, C, M, scratch: Scratch, also: np.ndarray | None = None):
    """Per-column loss, gradient and Hessian weights of 0.5|w|^2 + C sum log(1 + exp(-s x.w)),
    given the margins M = s * (X w) (the line search has already computed them).

    1 - sigma(M) is 1 / (1 + exp(M)) in numpy, not scipy.special.expit: importing scipy.special
    cost a fresh worker's figures task 0.09 CPU-s (issue 22, seventh round), a tenth of the
    evaluate stage on deezer_europe. numpy's exp differs from the C library's (expit's) by one
    unit in the last place on about 2 % of arguments; the F1 came out identical.
    Every n x labels value is computed in ``scratch``'s buffers (D too: valid until the next call).
    ``also``: n x c values whose X.T @ also is computed in the same pass over the rows as the
    gradient's product, and returned fourth (a design read in place, `TableRows`: see fit_logreg_ovr)."""
    cols = M.shape[1]
    a = np.negative(M, out=scratch("a", cols))
    loss = 0.5 * np.einsum("ij,ij->j", W, W) + C * softplus(a, scratch("sp", cols)).sum(axis=0)
    q = scratch("q", cols)
    with np.errstate(over="ignore"):               # exp(M) = inf for M > 709: q = 0, as expit gives
        np.exp(M, out=q)
    q += 1.0
    np.reciprocal(q, out=q)                        # 1 - sigma(margin) = 1 / (1 + exp(M))
    Sq = np.multiply(S, q, out=a)
    if also is None:
        G = W - C * _times_t(Xa, Xh, Sq, scratch)
    else:
        XtV = _times_t(Xa, Xh, np.hstack([Sq, also]), scratch)
        G = W - C * XtV[:, :cols]
    D = np.subtract(1.0, q, out=scratch("D", cols))
    D *= q                                         # sigma(z)(1 - sigma(z)), same for both signs
    return (loss, G, D) if also is None else (loss, G, D, XtV[:, cols:])


def softplus(a: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """log(1 + e^a) of every entry, in place (``a`` overwritten and returned; ``tmp``: a buffer of its
    shape): ``np.logaddexp(0, a)``'s formula, max(a, 0) + log1p(e^-|a|), through numpy's vectorised
    exp and log1p.

    Why (issue 22, fourteenth round): ``np.logaddexp`` calls the C library's exp and log1p one
    entry at a time, 0.33 ms for deezer_europe's 25,452 training rows against 0.07 ms here, and the
    solver takes it of every training row at every loss and line-search trial. The values differ
    from logaddexp's by a unit in the last place on about 6 % of entries (the vectorised functions
    round differently); only the loss, which the line search compares, sees them, and the F1
    figures came out identical (deezer_europe, BlogCatalog, PPI)."""
    np.abs(a, out=tmp)
    np.negative(tmp, out=tmp)
    np.exp(tmp, out=tmp)
    np.log1p(tmp, out=tmp)
    np.maximum(a, 0.0, out=a)
    a += tmp
    return a


def fit_logreg_ovr(X: np.ndarray, Y: np.ndarray, *, C: float = 1.0, fit_intercept: bool = True,
                   tol: float = 1e-6, max_iter: int = 50, max_cg: int = 100,
                   spectrum: tuple[np.ndarray, np.ndarray] | None = None, start: np.ndarray | None = None,
                   design: tuple[np.ndarray, np.ndarray] | None = None,
                   start_scores: np.ndarray | None = None, scratch: Scratch | None = None) -> np.ndarray:
    """Fit one binary L2 logistic regression per column of ``Y`` (n x L, 0/1), all at once.

    Minimises, independently per label l, ``0.5 |w_l|^2 + C sum_i log(1 + exp(-s_il x_i.w_l))``
    with s = 2Y - 1 and x_i = [X_i, 1] when ``fit_intercept`` (liblinear's formulation).
    Stops a label when its gradient norm falls below ``tol`` times its initial one.
    ``spectrum`` = (eigenvalues, eigenvectors) of a Gram matrix close to the design's
    (``design_eigh``), used only by the preconditioner: none = the design's own, exact; or (top
    eigenvalues, their eigenvectors, the eigenvalue standing for every other one) (`top_spectrum`).
    Returns W of shape (d + 1, L) (last row = intercept) or (d, L).

    ``start``: W to start from (e.g. the solution of a smaller training set of the same
    labels: a warm start, fewer Newton steps). The stopping rule stays relative to the gradient
    norm at W = 0 (one product), so a warm start stops at the same accuracy as a cold one.
    ``start_scores``: X @ start (n x L), when the caller has it (`split_chain_f1` scores every
    labelled row with the previous split's W anyway): the start's margins then need no product.

    ``design``: (Xa, Xh), the design [X, 1] (or X) in float64 and float32, when the caller has
    them; X is then not read. Xa None: every product runs through the float32 Xh (`RepeatDesign`:
    one per repeat, its splits are prefixes; the loss, gradient and steps stay float64).
    """
    Xa, Xh = design if design is not None else fit_design(X, fit_intercept)
    S = 2.0 * np.asarray(Y, dtype=np.float64) - 1.0
    L = S.shape[1]
    W, Mall, (lam, Q, rest), scratch = _fit_start(Xa, Xh, S, start, start_scores, spectrum, scratch)
    g0_with_grad = start is not None and Xa is None and isinstance(Xh, TableRows)   # in the first gradient's pass
    g0 = None if start is None or g0_with_grad else \
        np.linalg.norm(0.5 * C * _times_t(Xa, Xh, S, scratch), axis=0)              # |grad| at W = 0
    active = np.arange(L)
    for _ in range(max_iter):
        if active.size == 0:
            break
        every = active.size == L                    # no column converged yet: views, not copies
        Sa, Wa = (S, W) if every else (S[:, active], W[:, active])
        if g0 is None and g0_with_grad:             # first pass (every column active)
            f, G, D, XtS = _loss_grad(Xa, Xh, Sa, Wa, C, Mall, scratch, also=S)
            g0 = np.linalg.norm(0.5 * C * XtS, axis=0)
        else:
            f, G, D = _loss_grad(Xa, Xh, Sa, Wa, C, Mall if every else Mall[:, active], scratch)
        gnorm = np.linalg.norm(G, axis=0)
        if g0 is None:                              # first pass: every label is active
            g0 = gnorm.copy()
        done = gnorm <= tol * g0[active]
        if done.all():
            break
        keep = ~done
        active, Sa, Wa, f, G, D, gnorm = (active[keep], Sa[:, keep], Wa[:, keep], f[keep],
                                          G[:, keep], D[:, keep], gnorm[keep])
        P, XP = _newton_direction(Xh, G, D, gnorm, C, (lam, Q, rest), max_cg, scratch)
        SXP = np.multiply(Sa, XP, out=XP)
        t, pending = _armijo_steps(Sa, Wa, f, G, P, SXP, C, Mall, active, scratch)
        W[:, active] = Wa + t * P
        if pending.all():
            break
    return W


def _fit_start(Xa, Xh, S, start, start_scores, spectrum, scratch):
    """`fit_logreg_ovr`'s starting state: W (zeros or ``start``), the margins S * (X @ W) at it,
    the preconditioner's (eigenvalues, eigenvectors, rest) and the solver's buffers (``scratch``
    reused when given)."""
    n, width = Xh.shape
    L = S.shape[1]
    W = np.zeros((width, L)) if start is None else np.array(start, dtype=np.float64)
    if spectrum is None:                                              # shared by every label
        spectrum = np.linalg.eigh(Xa.T @ Xa if Xa is not None else (Xh.T @ Xh).astype(np.float64))
    lam, Q, rest = np.maximum(spectrum[0], 0.0), spectrum[1], (spectrum[2] if len(spectrum) > 2 else None)
    Mall = np.zeros((n, L)) if start is None else \
        S * (_times(Xa, Xh, W) if start_scores is None else start_scores)     # margins at the current W
    scratch = Scratch(n, L) if scratch is None else scratch.sized(n, L)
    return W, Mall, (lam, Q, rest), scratch


def fit_design(X: np.ndarray, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(Xa, Xh): the design [X, 1] (or X) in float64 and its float32 copy (the Hessian products)."""
    X = np.asarray(X, dtype=np.float64)
    Xa = np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X
    return Xa, Xa.astype(np.float32)


def _newton_direction(Xh, G, D, gnorm, C, spectrum, max_cg: int, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Newton direction P of every active label at once, and the design's product X P: preconditioned
    CG on H p = -G, one independent system per column (H = I + C Xa' diag(D) Xa), stopped per column
    by the inexact-Newton forcing term. The preconditioner is H with D replaced by its mean, solved
    exactly through the Gram spectrum ``(lam, Q, rest)`` that every label shares (rest None: Q is
    a whole eigenbasis; else every direction outside Q's columns has eigenvalue ``rest``).

    Why ``Xh`` (the design in float32): the direction only has to be a descent direction
    accurate to the forcing term (10 % of the gradient at best), so its products, two per CG
    step and most of the solver's time, run in float32 at about half the cost; the gradient,
    the loss and the line search stay float64, so the optimum is float64's. On BlogCatalog
    (DeepWalk) and PPI (FastRP, d=512) the F1 figures came out identical to the last digit.

    Why X P too (issue 22, eighth round): P is a sum of the CG directions, whose products X Pd
    each CG step computes anyway, so X P costs an n x labels update per step instead of a pass
    over the design; the line search then tries its steps on the margins M + t s X P without
    any product (it spent a pass per Newton step, about 10 % of node classification's CPU).
    X P is ``scratch``'s buffer "xp" (valid until the next call)."""
    lam, Q, rest = spectrum
    cols = G.shape[1]
    D32 = scratch("d32", cols, np.float32)
    np.copyto(D32, D, casting="same_kind")
    XPd, DXPd, step = scratch("xpd", cols, np.float32), scratch("dxpd", cols, np.float32), scratch("step", cols)
    inv = 1.0 / (1.0 + C * lam[:, None] * D.mean(0)[None, :])
    inv_rest = 0.0 if rest is None else 1.0 / (1.0 + C * rest * D.mean(0))

    def prec(R):
        if rest is None:
            return Q @ (inv * (Q.T @ R))
        return inv_rest * R + Q @ ((inv - inv_rest) * (Q.T @ R))
    P = np.zeros_like(G)
    XP = scratch("xp", cols)
    XP[...] = 0.0
    R = -G
    Z = prec(R)
    Pd = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    eta = np.minimum(0.5, np.sqrt(gnorm)) * gnorm     # inexact-Newton forcing term
    live = np.ones(G.shape[1], dtype=bool)
    for _cg in range(max_cg):
        if isinstance(Xh, TableRows):              # both products in one pass over the rows
            HP = Pd + C * Xh.hessian(D32, Pd, XPd)
        else:
            skinny_product(Xh, Pd.astype(np.float32), out=XPd)
            HP = Pd + C * skinny_product(Xh.T, np.multiply(D32, XPd, out=DXPd)).astype(np.float64)
        pHp = np.einsum("ij,ij->j", Pd, HP)
        alpha = np.where(live, rz / np.maximum(pHp, 1e-300), 0.0)
        P += alpha * Pd
        XP += np.multiply(alpha, XPd, out=step)
        R -= alpha * HP
        live &= np.linalg.norm(R, axis=0) > 0.1 * eta
        if not live.any():
            break
        Z = prec(R)
        rz_new = np.einsum("ij,ij->j", R, Z)
        beta = np.where(live, rz_new / np.maximum(rz, 1e-300), 0.0)
        Pd = Z + beta * Pd
        rz = rz_new
    return P, XP


def _armijo_steps(Sa, Wa, f, G, P, SXP, C, Mall, active, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Armijo backtracking along P, per column: halve each label's step until its loss decreases
    enough (30 halvings at most). A step t's margins are M + t s X P (``SXP`` = s X P, from
    `_newton_direction`): no product. Writes the accepted margins into Mall (so the next
    iteration's loss needs no extra product) and returns (steps, pending): a column still pending
    found no decrease and gets step 0 (it has converged). While every column is pending (the
    usual first trial) the trial margins are computed in ``scratch``'s buffers."""
    slope = np.einsum("ij,ij->j", G, P)
    cols = G.shape[1]
    M0 = Mall if active.size == Mall.shape[1] else Mall[:, active]   # a view: accepted columns are done
    t = np.ones(cols)
    pending = np.ones(cols, dtype=bool)
    for _ls in range(30):
        idx = np.flatnonzero(pending)
        Wn = Wa[:, idx] + t[idx] * P[:, idx]
        if idx.size == cols:
            Mn = np.multiply(t, SXP, out=scratch("mn", cols))
            Mn += M0
            a = np.negative(Mn, out=scratch("a", cols))
        else:
            Mn = M0[:, idx] + t[idx] * SXP[:, idx]
            a = -Mn
        fn = 0.5 * np.einsum("ij,ij->j", Wn, Wn) + C * softplus(a, scratch("sp", cols)[:, :a.shape[1]]).sum(axis=0)
        ok = fn <= f[idx] + 1e-4 * t[idx] * slope[idx]
        if ok.all() and M0 is Mall and idx.size == cols:
            Mall[...] = Mn
        else:
            Mall[:, active[idx[ok]]] = Mn[:, ok]
        pending[idx[ok]] = False
        if not pending.any():
            break
        t[pending] *= 0.5
    t[pending] = 0.0                                  # no decrease found: column has converged
    return t, pending


def decision_scores(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if W.shape[0] == X.shape[1] + 1:
        return X @ W[:-1] + W[-1]
    return X @ W


# ---------------------------------------------------------------------------------------------
# protocol
# ---------------------------------------------------------------------------------------------

def label_matrix(node_idx, label_idx):
    """(nodes, labels, Y) from (node, label) pairs: sorted labelled nodes, sorted label values,
    boolean indicator matrix; duplicate pairs collapse."""
    node_idx = np.asarray(node_idx, dtype=np.int64).ravel()
    label_idx = np.asarray(label_idx, dtype=np.int64).ravel()
    if node_idx.shape != label_idx.shape:
        raise ValueError("node_idx and label_idx must have the same length")
    nodes, ni = np.unique(node_idx, return_inverse=True)
    labels, li = np.unique(label_idx, return_inverse=True)
    Y = np.zeros((nodes.size, labels.size), dtype=bool)
    Y[ni, li] = True
    return nodes, labels, Y


def split_permutation(n: int, seed: int) -> np.ndarray:
    """The node order of one repeat; the first int(ratio * n) entries are the training nodes.
    Same permutation for every ratio of a repeat (as in the DeepWalk scoring script)."""
    return np.random.default_rng(seed).permutation(n)


def predict_top_k(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean prediction: the k[i] highest-scoring labels of row i (ties: lower column first).
    Every k[i] = 1 (single-label): the argmax, the first of equal maxima, as the stable sort's."""
    k = np.asarray(k)
    if scores.shape[0] and scores.shape[1] and (k == 1).all():
        pred = np.zeros(scores.shape, dtype=bool)
        pred[np.arange(scores.shape[0]), np.argmax(scores, axis=1)] = True
        return pred
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(scores.shape[1])[None, :]
    return ranks < np.asarray(k)[:, None]


def column_counts(Y: np.ndarray) -> np.ndarray:
    """The true entries of each column of the boolean n x L matrix ``Y`` (int64), as ``Y.sum(0)``.

    Why (issue 22, fourteenth round): numpy sums a few columns of a tall boolean matrix along its
    strided axis one element at a time, 0.36 ms for deezer_europe's 25,452 x 2 test labels, against
    0.03 ms for the rows of its transposed copy; node classification counted such columns about 20
    times a call (F1 of each split, the labels' positives of each fit). Many columns: ``sum(0)``,
    which the copy does not beat (BlogCatalog's 39)."""
    if Y.ndim == 2 and Y.shape[1] <= SKINNY_COLUMNS:
        return np.ascontiguousarray(Y.T).sum(1)
    return Y.sum(0)


def f1_scores(Y_true: np.ndarray, Y_pred: np.ndarray) -> tuple[float, float]:
    """(micro, macro) F1 over label columns; a label with no true and no predicted positives
    scores 0 in the macro average (scikit-learn's ``zero_division=0``)."""
    Y_true = Y_true.astype(bool)
    Y_pred = Y_pred.astype(bool)
    hit = column_counts(Y_true & Y_pred)
    tp = hit.astype(np.float64)
    fp = (column_counts(Y_pred) - hit).astype(np.float64)
    fn = (column_counts(Y_true) - hit).astype(np.float64)
    den = 2 * tp + fp + fn
    micro = float(2 * tp.sum() / den.sum()) if den.sum() > 0 else 0.0
    per = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return micro, float(per.mean()) if per.size else 0.0


def design_eigh(Xa: np.ndarray | TableRows, scale: float, rank: int = 0, seed: int = 0) -> tuple:
    """Eigen-decomposition of ``scale`` x the Gram matrix of float32 design rows ``Xa`` (the
    product in float32; the eigenvalues clipped at 0); ``rank`` > 0: its `top_spectrum` of that
    rank instead.

    Why once per labelled set (`labelled_set_of_rows`): a training split of m of the n rows has a
    Gram matrix close to m / n times this one, and the solver's preconditioner needs no more than
    that (its products and line search are exact), so one decomposition, scaled by m / n per
    split, replaces one Gram product and one eigh per fit. The product runs in float32 (half the
    cost): a preconditioner needs a few correct digits, not sixteen. eval.mode=sampled takes the
    Gram matrix of a sample of ``eval.spectrum_rows`` rows, scaled by n / rows: it only
    conditions the solver, whose optimum and stopping rule do not depend on it (on deezer_europe,
    28,281 x 513, the whole Gram product and eigh were 0.83 CPU-s)."""
    G = (Xa.gram() if isinstance(Xa, TableRows) else Xa.T @ Xa).astype(np.float64) * scale
    if rank:
        return top_spectrum(G, rank, seed)
    lam, Q = np.linalg.eigh(G)
    return np.maximum(lam, 0.0), Q


def top_spectrum(G: np.ndarray, rank: int, seed: int = 0, iters: int = 3, extra: int = 8) -> tuple:
    """(top ``rank`` eigenvalues, their eigenvectors, the mean of the others) of the symmetric
    positive semi-definite G, by a seeded subspace iteration (``iters`` products with ``rank`` +
    ``extra`` columns, then Rayleigh-Ritz); the whole eigen-decomposition (2 items) when ``rank``
    + ``extra`` exceeds half G's size (that eigh is cheap).

    Why (issue 22, eighth round): the preconditioner needs G's large eigen-directions, not all
    of them. The Gram matrix of normalised rows with the constant column has one eigenvalue of
    about n and a slowly decaying rest; treating all but the top 96 as their mean cost about 2 %
    more CG products than the whole spectrum on deezer_europe and PPI (FastRP d = 512), while the
    513 x 513 eigh cost 21 ms (a sixth of deezer_europe's node classification) against 9 ms, and
    each CG step applies Q (513 x 104) instead of a 513 x 513 basis (PPI's 50 labels: 0.25 -> 0.18
    CPU-s for the whole protocol)."""
    m = G.shape[0]
    if 2 * (rank + extra) > m:
        lam, Q = np.linalg.eigh(G)
        return np.maximum(lam, 0.0), Q
    V = np.random.default_rng([seed, m, rank]).standard_normal((m, rank + extra))
    for _ in range(iters):
        V = orthonormal_basis(G @ V)
    lam, U = np.linalg.eigh(V.T @ G @ V)
    lam, Q = np.maximum(lam[extra:], 0.0), V @ U[:, extra:]
    return lam, Q, max(float(np.trace(G) - lam.sum()) / (m - rank), 0.0)


def orthonormal_basis(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of Y's columns: Y L^-T with L L^T = Y^T Y (Cholesky QR), or Q of
    ``np.linalg.qr`` when Y^T Y is not numerically positive definite.

    Why (issue 22, tenth round): numpy's QR of a 513 x 104 block cost 1.6-2.8 ms, three per
    `top_spectrum`, against 0.7 ms here; the bases agree to 4e-13 (columns up to sign) on
    deezer_europe's Gram matrix, and the Rayleigh-Ritz step that follows depends only on the
    subspace. The figures came out identical."""
    try:
        L = np.linalg.cholesky(Y.T @ Y)
    except np.linalg.LinAlgError:
        return np.linalg.qr(Y)[0]
    return Y @ np.linalg.inv(L).T


def scaled_spectrum(spectrum: tuple, factor: float) -> tuple:
    """The spectrum of ``factor`` x the matrix (eigenvalues scaled, vectors unchanged)."""
    return (spectrum[0] * factor, spectrum[1], *(r * factor for r in spectrum[2:]))


def f1_bootstrap_sd(Y_true: np.ndarray, Y_pred: np.ndarray, resamples: int, seed) -> tuple[float, float]:
    """Standard deviations of (micro, macro) F1 over ``resamples`` bootstrap resamples of the test
    rows (drawn with replacement, seeded by ``seed``).

    Why: eval.mode=sampled scores fewer splits than the exact protocol; the F1 of one split
    varies with which nodes it tests on, and a bootstrap of the test rows measures that spread
    from the split itself. Only a row's hits (true / false positive, false negative per label)
    enter the F1, so rows with the same hits are one category and a resample is a multinomial
    draw of the categories' counts (two labels: at most four categories, whatever the rows)."""
    Y_true, Y_pred = Y_true.astype(bool), Y_pred.astype(bool)
    n, L = Y_true.shape
    if n == 0 or resamples <= 0:
        return 0.0, 0.0
    hits = np.hstack([Y_true & Y_pred, ~Y_true & Y_pred, Y_true & ~Y_pred])
    first, counts = hit_categories(hit_codes(hits))
    sums = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples) @ hits[first].astype(np.float64)
    tp, fp, fn = sums[:, :L], sums[:, L:2 * L], sums[:, 2 * L:]
    den = 2 * tp + fp + fn
    tot = den.sum(1)
    micro = np.divide(2 * tp.sum(1), tot, out=np.zeros_like(tot), where=tot > 0)
    macro = np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0).mean(1)
    return float(np.std(micro, ddof=1)), float(np.std(macro, ddof=1))


def hit_codes(hits: np.ndarray) -> np.ndarray:
    """Each row's hits packed into bytes (``np.packbits``), as one unsigned integer per row when
    they fit 8 bytes (the bytes read big-endian, so the integers sort as the byte rows do and
    ``np.unique`` finds the same categories in the same order), else the byte rows.

    Why: ``np.unique(..., axis=0)`` sorts the rows as structured records, 2.2 ms per split on
    deezer_europe's 25,000 test rows against 0.2 ms for integers (issue 22, eighth round)."""
    packed = np.packbits(hits, axis=1)
    if packed.shape[1] > 8:
        return packed
    codes = np.zeros(packed.shape[0], dtype=np.uint64)
    for column in packed.T:
        codes = (codes << np.uint64(8)) | column
    return codes


def hit_categories(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row, count) of each distinct row of ``codes`` (`hit_codes`), in the order and with
    the first occurrences ``np.unique(codes, axis=0, return_index=True, return_counts=True)`` gives.

    Why (issue 22, ninth round): byte rows wider than 8 (BlogCatalog's 39 labels: 15 bytes) went
    through ``np.unique(axis=0)``'s sort of structured records, 31 ms for 9,281 test rows of 4,545
    categories; here they are 8-byte big-endian words sorted by ``np.lexsort`` (stable, so each
    category's first row is its first occurrence; words compare as their bytes do)."""
    if codes.ndim == 1:
        _, first, counts = np.unique(codes, return_index=True, return_counts=True)
        return first, counts
    n, width = codes.shape
    padded = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = codes
    words = padded.view(">u8").astype(np.uint64)                 # n x words, each word's bytes big-endian
    order = np.lexsort(words.T[::-1]) if n else np.zeros(0, dtype=np.int64)
    ranked = words[order]
    starts = np.flatnonzero(np.r_[True, (ranked[1:] != ranked[:-1]).any(axis=1)]) if n else np.zeros(0, np.int64)
    return order[starts], np.diff(np.r_[starts, n])


def split_predictions(Xtr, Ytr, Xte, *, multilabel: bool, C: float = 1.0, tol: float = 1e-6,
                      spectrum: tuple[np.ndarray, np.ndarray] | None = None, start: np.ndarray | None = None,
                      design: tuple[np.ndarray, np.ndarray] | None = None, k_true: np.ndarray | None = None):
    """(boolean predictions of the test rows, fitted (d + 1, labels) W): ``classify_split``
    without the scoring. ``k_true``: each test row's true label count (multi-label top-k)."""
    W_all = split_weights(Xtr, Ytr, C=C, tol=tol, spectrum=spectrum, start=start, design=design,
                          width=Xte.shape[1] + 1)
    return top_k_predictions(decision_scores(Xte, W_all), Ytr, k_true, multilabel), W_all


def split_weights(Xtr, Ytr, *, C: float, tol: float, spectrum, start=None, design=None, start_scores=None,
                  width: int | None = None, scratch: Scratch | None = None) -> np.ndarray:
    """The fitted (d + 1, labels) W of one training set (``fit_logreg_ovr`` of the labels with
    both positive and negative training rows; zero columns for the others). ``start`` and
    ``start_scores`` (X @ start): a warm start, see ``fit_logreg_ovr``."""
    pos = column_counts(Ytr)
    fit_cols = np.flatnonzero((pos > 0) & (pos < Ytr.shape[0]))
    W_all = np.zeros((width or design[1].shape[1], Ytr.shape[1]))
    if fit_cols.size:
        W_all[:, fit_cols] = _fit_columns(Xtr, Ytr[:, fit_cols], C=C, tol=tol, spectrum=spectrum,
                                          start=None if start is None else start[:, fit_cols], design=design,
                                          start_scores=None if start_scores is None else start_scores[:, fit_cols],
                                          scratch=scratch)
    return W_all


def top_k_predictions(scores: np.ndarray, Ytr: np.ndarray, k_true: np.ndarray | None, multilabel: bool) -> np.ndarray:
    """Boolean predictions from the test rows' ``scores`` of every label (overwritten in place):
    labels with no positive training row are never predicted (scikit-learn's one-vs-rest treats
    them as constant-0 predictors), labels positive on every training row always score highest;
    multi-label rows get their ``k_true`` best labels, single-label rows the best one."""
    pos = column_counts(Ytr)
    scores[:, pos == 0] = -np.inf
    scores[:, pos == Ytr.shape[0]] = np.inf
    k = k_true if multilabel else np.ones(scores.shape[0], dtype=np.int64)
    k = np.minimum(k, int((pos > 0).sum()))
    return predict_top_k(scores, k)


def classify_split(Xtr, Ytr, Xte, Yte, *, multilabel: bool, C: float = 1.0, tol: float = 1e-6,
                   spectrum: tuple[np.ndarray, np.ndarray] | None = None, start: np.ndarray | None = None,
                   return_weights: bool = False, design: tuple[np.ndarray, np.ndarray] | None = None):
    """Train on one split and return (micro, macro) F1 on the test part.

    Labels with no positive training node are never predicted (scikit-learn's one-vs-rest
    treats them as constant-0 predictors), labels positive on every training node always score
    highest (constant-1 predictors); both still count in the macro average. ``tol`` and
    ``spectrum`` go to ``fit_logreg_ovr``. ``start``: a (d + 1, labels) warm start (columns of
    labels not fitted are ignored); ``return_weights`` adds the fitted (d + 1, labels) W (zero
    columns for labels not fitted) to the result, to warm-start a larger split of the same repeat.
    ``design``: the training rows' design, see ``fit_logreg_ovr``.
    """
    pred, W_all = split_predictions(Xtr, Ytr, Xte, multilabel=multilabel, C=C, tol=tol, spectrum=spectrum,
                                    start=start, design=design, k_true=Yte.sum(1))
    f1 = f1_scores(Yte, pred)
    return (*f1, W_all) if return_weights else f1


def _fit_columns(Xtr, Y, *, C, tol, spectrum, start, design, start_scores=None, scratch=None):
    """``fit_logreg_ovr`` of the columns of Y; two complementary columns (a two-class
    single-label problem: every training node has exactly one of them) are fitted once.

    Why: label 1's problem is label 0's with every sign flipped (s -> -s), so its minimiser is
    exactly -w_0 (the intercept is a regularised feature like the others, so nothing breaks the
    symmetry) and the solver's iterates are the negated ones step for step: the second fit is
    the first one's negation, and fitting it costs as much again (github_social: half the CPU
    of node classification)."""
    Yb = np.asarray(Y, dtype=bool)
    if Yb.shape[1] == 2 and np.array_equal(Yb[:, 0], ~Yb[:, 1]):
        w = fit_logreg_ovr(Xtr, Y[:, :1], C=C, tol=tol, spectrum=spectrum,
                           start=None if start is None else start[:, :1], design=design,
                           start_scores=None if start_scores is None else start_scores[:, :1], scratch=scratch)
        return np.hstack([w, -w])
    return fit_logreg_ovr(Xtr, Y, C=C, tol=tol, spectrum=spectrum, start=start, design=design,
                          start_scores=start_scores, scratch=scratch)


IN_PLACE_SHARE = 0.5               # labelled rows / table rows from which the design is read in place


@dataclass
class LabelledSet:
    """The rows node classification scores: the labelled nodes (a seeded sample of them above
    ``max_nodes``), their label matrix and Gram spectrum, and where their rows are read from:
    labelled row i is row ``index[i]`` of ``source`` (row i when ``index`` is None), as float64,
    divided by its norm when ``normalize`` (``rows``).

    Why in place, not a float64 copy of the labelled rows: the copy (116 MB on deezer_europe,
    28,281 x 512) was faulted in page by page in each worker (the workers map every array of
    1 MiB or more on its own) only for each repeat's design to gather it once more; now the
    design and the test scores normalise the rows they need a block at a time, the same values
    bit for bit (docs/evaluation.md, seventh round). ``X`` builds the whole set when asked."""
    nodes: np.ndarray                     # the node ids of the rows, ascending
    source: np.ndarray
    index: np.ndarray | None
    Y: np.ndarray
    multilabel: bool
    num_labels: int
    labelled_nodes: int                   # before any sampling
    spectrum: tuple[np.ndarray, np.ndarray] | None = None
    normalize: bool = True
    table_norms: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)   # see below
    base: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.nodes.size)

    @property
    def dim(self) -> int:
        return int(self.source.shape[1])

    def rows(self, pos: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The labelled rows at positions ``pos``, float64, unit length when ``normalize``
        (``unit_rows``: a block at a time), written into ``out`` when given (a float32 ``out``
        gets them rounded, as ``astype`` would)."""
        src = pos if self.index is None else self.index[pos]
        if self.normalize:
            return unit_rows(self.source, src, np.float64, out=out)
        out = np.empty((len(src), self.dim)) if out is None else out
        out[...] = self.source[src]
        return out

    def design_rows(self, pos: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The labelled rows at positions ``pos`` as the solver's design holds them: float32, unit
        length when ``normalize``, each norm and quotient computed in the table's precision
        (float32 for an embedding table, float64 for a float64 one), written into ``out`` when
        given. Every row is computed on its own, so any selection gives the same row bit for bit.

        Why the table's precision, not float64 then rounded (issue 22, eighth round): the float64
        conversion, squares and quotient of 28,281 x 512 rows cost deezer_europe 23 ms against
        14 ms in float32, which is what the row gather alone costs; the rows differ by at most a
        unit in float32's last place (a relative 6e-8), far below the solver's 1e-3 stopping rule."""
        src = pos if self.index is None else self.index[pos]
        out = np.empty((len(src), self.dim), dtype=np.float32) if out is None else out
        if self.normalize:
            return unit_rows(self.source, src, np.float64 if self.source.dtype == np.float64 else np.float32,
                             out=out)
        out[...] = self.source[src]
        return out

    @functools.cached_property
    def X(self) -> np.ndarray:
        """Every labelled row (see ``rows``) in one array; the splits never build it."""
        if self.index is None and not self.normalize and self.source.dtype == np.float64:
            return self.source
        return self.rows(np.arange(self.size))

    @property
    def in_place(self) -> bool:
        """Whether the splits read the design rows from the float32 table in place (`TableRows`):
        when the labelled rows are at least `IN_PLACE_SHARE` of the table's and the labels at most
        `SKINNY_COLUMNS` (matrix-vector products, bound by memory: reading the table's rows in
        place costs what reading a copy of them does). With more labels the products are gemm,
        bound by arithmetic, and the unlabelled and test rows a product over the whole table
        also multiplies cost more than the copy saves (BlogCatalog, 39 labels: 0.25 -> 0.36 CPU-s)."""
        return (self.source.dtype == np.float32 and self.Y.shape[1] <= SKINNY_COLUMNS
                and self.size >= IN_PLACE_SHARE * self.source.shape[0])

    def base_design(self, seed: int) -> tuple[np.ndarray | TableRows, np.ndarray]:
        """(design, place): every labelled row as a float32 design row [unit row, 1] (see
        `RepeatDesign`), laid out in repeat 0's split order (``split_permutation(n, seed)``), and
        the place of each labelled row in it. Built once per set and seed.

        Why one layout for every repeat: repeat 0's design is this array itself (its splits are
        prefixes of it); another repeat's rows are gathered from it, already normalised, and a
        repeat that trains on a small share only scores its test rows in it, so each row is
        normalised once (deezer_europe's sampled default normalised 88,500 rows for 28,281 before).
        When the set is `in_place`, the design is a `TableRows`: no copy, only the rows' norms."""
        if self.base is None or self.base[0] != seed:
            n, d = self.size, self.dim
            perm = split_permutation(n, seed)
            if self.in_place:
                src = perm if self.index is None else self.index[perm]
                norms = None if not self.normalize else (
                    row_norms(self.source, src) if self.table_norms is None else self.table_norms[src])
                Xh = TableRows(self.source, src, norms)
            else:
                Xh = np.empty((n, d + 1), dtype=np.float32)
                self.design_rows(perm, out=Xh[:, :d])
                Xh[:, d] = 1.0
            place = np.empty(n, dtype=np.int64)
            place[perm] = np.arange(n)
            self.base = (seed, Xh, place)
        return self.base[1], self.base[2]

    def compact(self) -> LabelledSet:
        """The same set holding its own rows only, not the table behind them: what a task hands
        other tasks through the object store. The rows are the design's (``design_rows``: float32,
        already unit length), so its base design equals this set's bit for bit."""
        return dataclasses.replace(self, source=self.design_rows(np.arange(self.size)), index=None,
                                   normalize=False, table_norms=None)

    def info(self) -> dict:
        """What was scored, for ``classification_summary``."""
        return {"multilabel": self.multilabel, "num_nodes": self.size, "num_labels": self.num_labels,
                "labelled_nodes": self.labelled_nodes}


@dataclass
class LabelSelection:
    """Which rows node classification scores (before any row is read): the labelled nodes, a
    seeded sample of them above ``max_nodes`` (ascending), their label matrix, and the counts."""
    nodes: np.ndarray
    Y: np.ndarray
    multilabel: bool
    num_labels: int
    labelled_nodes: int                   # before any sampling


def label_selection(node_idx, label_idx, *, multilabel=None, max_nodes: int | None = None,
                    seed: int = 0, num_rows: int | None = None) -> LabelSelection:
    """The labelled nodes ``labelled_set`` scores; a sharded evaluation gathers only their rows
    (workers/evaluate/sharded.py). ``num_rows``: the table's rows, to refuse labels beyond it."""
    nodes, labels, Y = label_matrix(node_idx, label_idx)
    if num_rows is not None and nodes.size and (nodes[0] < 0 or nodes[-1] >= num_rows):
        raise ValueError(f"label node ids outside 0..{num_rows - 1}")
    if multilabel is None:
        multilabel = bool((Y.sum(1) > 1).any())
    total = nodes.size
    if max_nodes and total > max_nodes:
        keep = np.sort(np.random.default_rng([seed, total]).choice(total, size=max_nodes, replace=False))
        nodes, Y = nodes[keep], Y[keep]
    return LabelSelection(nodes, Y, bool(multilabel), int(labels.size), int(total))


def labelled_set(X, node_idx, label_idx, *, normalize=True, multilabel=None, max_nodes: int | None = None,
                 seed: int = 0, threads: int | None = 1, spectrum_rows: int | None = None,
                 spectrum_rank: int = 0, norms: np.ndarray | None = None) -> LabelledSet:
    """The labelled rows of ``X`` (see ``node_classification``). Above ``max_nodes`` labelled
    nodes, a sample of ``max_nodes`` of them drawn with ``seed`` (kept in node order) stands
    for the whole set: the fits cost about n x d x labels per product. The splits then train on
    fewer nodes, which lowers F1 somewhat (github_social, FastRP d=512: a sample of 20,000 of
    37,700 nodes lowered Micro-F1 by 0.005-0.010 at 0.1-0.9; 3.9 CPU-s -> 2.4), so the
    default cap (eval.classify_max_nodes) sits well above tens of thousands. ``threads``
    caps BLAS threads for the Gram spectrum (see ``blas_threads``); ``spectrum_rows``,
    ``spectrum_rank``, ``norms``: see ``labelled_set_of_rows``."""
    X = np.asarray(X)
    sel = label_selection(node_idx, label_idx, multilabel=multilabel, max_nodes=max_nodes, seed=seed,
                          num_rows=X.shape[0])
    return labelled_set_of_rows(X, sel, normalize=normalize, threads=threads, spectrum_rows=spectrum_rows,
                                seed=seed, index=sel.nodes, spectrum_rank=spectrum_rank, norms=norms)


def labelled_set_of_rows(rows: np.ndarray, sel: LabelSelection, *, normalize=True, threads: int | None = 1,
                         spectrum_rows: int | None = None, seed: int = 0, index: np.ndarray | None = None,
                         spectrum_rank: int = 0, norms: np.ndarray | None = None) -> LabelledSet:
    """The LabelledSet of a selection from its rows (``rows[i]`` = the table row of ``sel.nodes[i]``;
    with ``index``, ``rows[index[i]]`` is). The rows stay where they are (`LabelledSet`); its base
    design for ``seed`` is built here, and the Gram spectrum is that of the design's rows, so no
    row is normalised twice: of its first ``spectrum_rows`` rows when fewer than all (the base
    design is in a seeded random order, so they are a seeded sample of the labelled rows, and a
    view: no gather; a `TableRows` sums its Gram matrix a block of gathered rows at a time),
    scaled by n / rows; its top ``spectrum_rank`` eigenpairs only when > 0
    (`top_spectrum`), else all of them. ``norms``: every row's norm as `row_norms` gives it, when the
    caller has them (the figures task computes them once for both node classification and
    reconstruction); an in-place design then reads its norms from them instead of computing them."""
    ls = LabelledSet(sel.nodes, np.asarray(rows), index, sel.Y, sel.multilabel, sel.num_labels, sel.labelled_nodes,
                     normalize=bool(normalize), table_norms=norms)
    sample = min(ls.size, spectrum_rows or ls.size)
    with blas_threads(threads):
        ls.spectrum = design_eigh(ls.base_design(seed)[0][:sample], ls.size / max(sample, 1),
                                  spectrum_rank, seed)
    return ls


@dataclass
class RepeatDesign:
    """A repeat's labelled rows in its split order (``split_permutation(n, seed + repeat)``): the
    design [X, 1] in float32 and the labels. Every split of the repeat trains on a prefix and
    tests on the rest, so they are views, not copies.

    Why: the fits of a 37,700 x 513 design (github_social, FastRP d = 512) spent most of their
    time gathering, widening and converting the rows for each split (three copies of 155 MB),
    more than in the solver's products.

    Why float32 only (issue 22, seventh round): the design was also kept in float64 for the
    gradient and the line search. On deezer_europe (28,281 x 513) that copy was 116 MB faulted in
    page by page in each worker, two thirds of the memory the fits read, and with its float32 twin
    the largest cost of node classification in a worker. The products now all run in float32
    (the rows are rounded from their float64 unit form, the weights per product) and return
    float64; loss, gradient, steps and weights stay float64. A float32 dot product of 513 terms
    is accurate to about 1e-6 of its terms' size, a thousand times below the stopping rule's
    1e-3 relative gradient (docs/evaluation.md: the F1 against the float64 design).

    Repeat 0's design is the set's `base_design` (no copy); another repeat's rows are gathered from
    it (a `TableRows` base: selected, read from the table in place). ``rows`` < n: only the first ``rows`` rows of the design are laid out (a repeat whose
    splits all train on fewer, eval.mode=sampled's extra repeats of the small ratios); its test
    rows are then scored in the base design, not copied. ``places[i]``: the base design's row
    holding design row i (every row of the repeat's order, laid out or not)."""
    repeat: int
    Xh: np.ndarray
    Y: np.ndarray
    perm: np.ndarray
    places: np.ndarray

    @classmethod
    def of(cls, ls: LabelledSet, repeat: int, seed: int = 0, rows: int | None = None) -> RepeatDesign:
        n = ls.size
        base, place = ls.base_design(seed)
        perm = split_permutation(n, seed + repeat)
        places = place[perm]
        rows = n if rows is None else min(n, int(rows))
        if isinstance(base, TableRows):
            Xh = base[:rows] if repeat == 0 else base[places[:rows]]
        else:
            Xh = base[:rows] if repeat == 0 else np.take(base, places[:rows], axis=0)
        return cls(repeat, Xh, ls.Y[perm], perm, places)

    @property
    def whole(self) -> bool:
        """Whether every labelled row is laid out (else the test rows are scored in the base design)."""
        return self.Xh.shape[0] == self.perm.size

    def fit(self, ls: LabelledSet, ratio: float, *, C: float, tol: float, start=None, start_scores=None,
            scratch: Scratch | None = None) -> np.ndarray:
        """The fitted (d + 1, labels) W of this repeat's split at ``ratio`` (training rows: the first
        int(ratio * n)); ``start``, ``start_scores`` (X @ start over those rows): a warm start;
        ``scratch``: the solver's buffers, shared with other fits."""
        n, k = ls.size, int(ratio * ls.size)
        if not 0 < k < n:
            raise ValueError(f"ratio {ratio} leaves an empty train or test set for {n} labelled nodes")
        if self.Xh.shape[0] < k:
            raise ValueError(f"the repeat's design holds {self.Xh.shape[0]} rows, the split trains on {k}")
        X = self.Xh[:k]
        return split_weights(None, self.Y[:k], C=C, tol=tol, spectrum=scaled_spectrum(ls.spectrum, k / n), start=start,
                             start_scores=start_scores, design=(None, X), scratch=scratch)

    def figures(self, ls: LabelledSet, ratio: float, test_scores: np.ndarray, *, bootstrap: int = 0,
                seed: int = 0) -> tuple[float, float, tuple[float, float]]:
        """(micro, macro, (micro sd, macro sd)) of the split at ``ratio`` from its test rows' scores
        (float32, every label; overwritten), the sd over ``bootstrap`` resamples of the test rows."""
        k = int(ratio * ls.size)
        Ytr, Yte = self.Y[:k], self.Y[k:]
        pred = top_k_predictions(test_scores, Ytr, Yte.sum(1) if ls.multilabel else None, ls.multilabel)
        sd = f1_bootstrap_sd(Yte, pred, bootstrap, [seed, self.repeat, k]) if bootstrap else (0.0, 0.0)
        return (*f1_scores(Yte, pred), sd)


def split_f1(ls: LabelledSet, ratio: float, repeat: int, *, seed: int = 0, C: float = 1.0,
             tol: float = 1e-3, threads: int | None = 1, start: np.ndarray | None = None,
             return_weights: bool = False, design: RepeatDesign | None = None):
    """(micro, macro) F1 of one ratio and repeat (``split_scores`` without the bootstrap)."""
    mi, ma, _, W = split_scores(ls, ratio, repeat, seed=seed, C=C, tol=tol, threads=threads, start=start,
                                design=design)
    return (mi, ma, W) if return_weights else (mi, ma)


def split_scores(ls: LabelledSet, ratio: float, repeat: int, *, seed: int = 0, C: float = 1.0,
                 tol: float = 1e-3, threads: int | None = 1, start: np.ndarray | None = None,
                 design: RepeatDesign | None = None, bootstrap: int = 0):
    """(micro, macro) F1 of one ratio and repeat: trains on the first int(ratio * n) nodes of
    ``split_permutation(n, seed + repeat)``, tests on the rest.
    ``start``: see ``classify_split`` (``split_chain_f1`` chains them);
    ``design``: the repeat's `RepeatDesign` when the caller keeps it for several ratios.
    Returns (micro, macro, (micro sd, macro sd) over ``bootstrap`` resamples of the test nodes
    (zeros without), fitted W)."""
    with blas_threads(threads):
        rd = design if design is not None and design.repeat == repeat else RepeatDesign.of(ls, repeat, seed)
        W = rd.fit(ls, ratio, C=C, tol=tol, start=start)
        k = int(ratio * ls.size)
        tests = times32(rd.Xh[k:], W) if rd.whole else times32(ls.base_design(seed)[0], W)[rd.places[k:]]
        mi, ma, sd = rd.figures(ls, ratio, tests, bootstrap=bootstrap, seed=seed)
    return mi, ma, sd, W


def times32(Xh: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Xh @ W of a float32 design, in float32 (W rounded to float32): decision scores. A two-class
    problem's W = [w, -w] (`_fit_columns`) is scored once, its second column negated (exactly)."""
    W32 = W.astype(np.float32)
    if _negated_pair(W32):
        first = Xh @ W32[:, 0]
        return np.stack([first, -first], axis=1)
    return skinny_product(Xh, W32)


def _negated_pair(W32: np.ndarray) -> bool:
    """Whether W is a two-class problem's [w, -w] (`_fit_columns`): scored by its first column."""
    return W32.shape[1] == 2 and np.array_equal(W32[:, 1], -W32[:, 0])


def split_chain_f1(ls: LabelledSet, splits: list[tuple[float, int]], *, seed: int = 0, C: float = 1.0,
                   tol: float = 1e-3, threads: int | None = 1, bootstrap: int = 0,
                   full_ratios=()) -> list[tuple[float, int, float, float, float, float]]:
    """(ratio, repeat, micro, macro, micro sd, macro sd) of each split, in order (sd: over
    ``bootstrap`` resamples of the test nodes, 0 without and for ``full_ratios``, whose every
    repeat is scored: their means are the exact protocol's). A split warm-starts from its repeat's
    previous one when that ratio is smaller, and the splits of a repeat share its `RepeatDesign`.

    Why warm starts: a repeat's training sets are nested (the first int(ratio * n) nodes of one
    permutation), so the smaller set's solution is close to the larger one's and Newton needs
    fewer steps from there; the stopping rule is the cold start's (relative to the gradient at W = 0).

    Why by levels (issue 22, eighth round): the splits are fitted level by level (every repeat's
    first split, then every repeat's second ...), and one product of the base design with the W
    of a level's splits scores their test rows and the next splits' training rows at once: a
    warm start's margins are rows of it, and the test rows of repeats whose design holds only
    their training rows are picked from it. On deezer_europe's sampled default (0.1 of three
    repeats, 0.5 and 0.9 of one) the scoring read 138,000 design rows, now 59,000; the last split
    of a chain scores only its test rows in its own design."""
    chains: dict[int, list[float]] = {}
    for r, rep in splits:
        chains.setdefault(rep, []).append(r)
    designs = {rep: RepeatDesign.of(ls, rep, seed, rows=int(max(rs) * ls.size) if max(rs) < 0.5 else None)
               for rep, rs in chains.items()}
    base = ls.base_design(seed)[0] if designs else None
    scratch = Scratch(max((int(r * ls.size) for r, _ in splits), default=0), ls.Y.shape[1])   # every fit's buffers
    done, carry = {}, {}                  # carry[rep] = (ratio, W, base scores of W or None) of its last split
    with blas_threads(threads):
        for level in range(max((len(rs) for rs in chains.values()), default=0)):
            batch = [(rs[level], rep, level + 1 < len(rs)) for rep, rs in chains.items() if level < len(rs)]
            fits = [chained_fit(ls, designs[rep], r, carry.get(rep), C=C, tol=tol, scratch=scratch)
                    for r, rep, _ in batch]
            wide = [i for i, (_, rep, more) in enumerate(batch) if more or not designs[rep].whole]
            scored = dict(zip(wide, base_scores(base, [fits[i] for i in wide])))
            for i, (r, rep, more) in enumerate(batch):
                rd, k = designs[rep], int(r * ls.size)
                tests = scored[i][rd.places[k:]] if i in scored else times32(rd.Xh[k:], fits[i])
                carry[rep] = (r, fits[i], scored[i] if more else None)
                done[r, rep] = rd.figures(ls, r, tests, bootstrap=0 if r in full_ratios else bootstrap, seed=seed)
    return [(r, rep, done[r, rep][0], done[r, rep][1], *done[r, rep][2]) for r, rep in splits]


def chained_fit(ls: LabelledSet, rd: RepeatDesign, ratio: float, prev, *, C: float, tol: float,
                scratch: Scratch | None = None) -> np.ndarray:
    """`RepeatDesign.fit` of ``ratio``, warm-started from ``prev`` = (ratio, W, base design scores
    of W or None), the repeat's previous split, when its ratio is smaller (its training rows are
    then a prefix of this split's)."""
    if prev is None or prev[0] >= ratio:
        return rd.fit(ls, ratio, C=C, tol=tol, scratch=scratch)
    k = int(ratio * ls.size)
    return rd.fit(ls, ratio, C=C, tol=tol, scratch=scratch, start=prev[1],
                  start_scores=None if prev[2] is None else prev[2][rd.places[:k]])


def base_scores(base: np.ndarray, Ws: list[np.ndarray]) -> list[np.ndarray]:
    """base @ W of each W (float32), through one product of the base design with all of them:
    the design is read once whatever their number (the product is memory-bound at a few columns)."""
    if isinstance(base, TableRows) and len(Ws) > 1:  # one pass over the table for every column
        W32s = [W.astype(np.float32) for W in Ws]
        cols = [W32[:, :1] if _negated_pair(W32) else W32 for W32 in W32s]
        B = base.product(np.hstack(cols))
        edges = np.cumsum([0] + [c.shape[1] for c in cols])
        return [np.hstack([B[:, lo:hi], -B[:, lo:hi]]) if _negated_pair(W32) else B[:, lo:hi]
                for W32, lo, hi in zip(W32s, edges[:-1], edges[1:])]
    if not Ws or all(W.shape[1] <= 2 for W in Ws):
        return [times32(base, W) for W in Ws]         # two-class or few columns: matrix-vector products
    B = times32(base, np.hstack(Ws))
    edges = np.cumsum([0] + [W.shape[1] for W in Ws])
    return [B[:, lo:hi] for lo, hi in zip(edges[:-1], edges[1:])]


def protocol_splits(ratios, repeats: int, small_ratio: float = 0.0, small_repeats: int = 0) -> list[tuple[float, int]]:
    """The (ratio, repeat) splits scored, chained per repeat (ratios ascending): ``repeats`` of
    each ratio, and ``small_repeats`` (when more) of the ratios up to ``small_ratio``.

    Why (eval.mode=sampled): a split's fits cost about its training rows, so the 0.1 split
    costs a ninth of the 0.9 one; and at small ratios the F1 varies most with the training set,
    which a bootstrap over the test nodes does not see. Scoring every repeat there is cheap and
    makes those figures the exact protocol's (the measured misses of one-split intervals were
    all at ratio 0.1)."""
    count = {float(r): max(repeats, small_repeats if r <= small_ratio + 1e-12 else 0) for r in ratios}
    return [(float(r), rep) for rep in range(max(count.values(), default=0)) for r in sorted(ratios)
            if rep < count[float(r)]]


def full_ratios(ratios, repeats: int, small_ratio: float = 0.0, small_repeats: int = 0) -> set[float]:
    """The ratios ``protocol_splits`` scores with every one of ``small_repeats`` (the exact
    protocol's repeats): their figures need no interval."""
    return {float(r) for r in ratios if small_repeats > repeats and r <= small_ratio + 1e-12}


def classification_summary(info: dict, ratios, repeats: int, f1: dict, sd: dict | None = None) -> dict:
    """The figures of ``node_classification`` from ``f1[(ratio, repeat)] = (micro, macro)``:
    means and across-repeat standard deviations per ratio, and what was scored (``info`` =
    ``LabelledSet.info()``; ``sampled`` says when ``num_nodes`` is a sample of ``labelled_nodes``).
    ``sd[(ratio, repeat)]`` = the bootstrap (micro, macro) sd of each split (eval.mode=sampled):
    adds ``micro_f1_ci95`` / ``macro_f1_ci95``, the half-widths of the normal 95 % interval of
    each mean over the repeats (1.96 sqrt(sum of the splits' variances) / repeats). A ratio's
    figures are over the repeats ``f1`` has for it (``protocol_splits``; ``repeats_per_ratio``
    when they differ)."""
    out = {"micro_f1": {}, "macro_f1": {}, "micro_f1_std": {}, "macro_f1_std": {},
           "repeats": int(repeats), "ratios": [float(r) for r in ratios],
           "multilabel": bool(info["multilabel"]), "num_nodes": int(info["num_nodes"]),
           "num_labels": int(info["num_labels"])}
    if info["num_nodes"] < info["labelled_nodes"]:
        out.update(sampled=True, labelled_nodes=int(info["labelled_nodes"]))
    reps = {r: sorted(rep for rr, rep in f1 if rr == r) for r in ratios}
    if len({len(v) for v in reps.values()}) > 1:
        out["repeats_per_ratio"] = {str(r): len(v) for r, v in reps.items()}
    for r in ratios:
        mi = [f1[(r, rep)][0] for rep in reps[r]]
        ma = [f1[(r, rep)][1] for rep in reps[r]]
        key = str(r)
        out["micro_f1"][key] = float(np.mean(mi))
        out["macro_f1"][key] = float(np.mean(ma))
        out["micro_f1_std"][key] = float(np.std(mi))
        out["macro_f1_std"][key] = float(np.std(ma))
    if sd is not None:
        out.update(mode="sampled", ci95_method="bootstrap over test nodes; 0 where every repeat is scored")
        for i, what in ((0, "micro_f1_ci95"), (1, "macro_f1_ci95")):
            out[what] = {str(r): round(float(1.96 * np.sqrt(sum(sd[(r, rep)][i] ** 2 for rep in reps[r]))
                                             / len(reps[r])), 6) for r in ratios}
    return out


def node_classification(X, node_idx, label_idx, *, ratios=(0.1, 0.5, 0.9), repeats=3, seed=0,
                        normalize=True, multilabel=None, C: float = 1.0, threads: int | None = 1,
                        tol: float = 1e-3, max_nodes: int | None = None, bootstrap: int = 0,
                        spectrum_rows: int | None = None, small_ratio: float = 0.0, small_repeats: int = 0,
                        spectrum_rank: int = 0, norms: np.ndarray | None = None) -> dict:
    """DeepWalk-protocol node classification of embedding rows ``X`` (n x d).

    Labels come as (node, label) pairs (multi-label allowed); unlabelled nodes are excluded.
    Rows are L2-normalised first when ``normalize``. Repeat r uses the permutation of
    ``split_permutation(n_labelled, seed + r)`` and trains on its first int(ratio * n) nodes.
    Multi-label graphs predict each test node's top-k labels (k = its true label count),
    single-label graphs the argmax; ``multilabel=None`` detects which from the pairs.
    ``threads`` caps BLAS threads during the fits (see ``blas_threads``; None = no cap).
    ``tol``: the solver's relative gradient tolerance; 1e-3 moved no F1 figure by more than
    0.0008 against 1e-6 on BlogCatalog (DeepWalk) and PPI (FastRP, d=512) at about half the
    Newton steps. ``max_nodes``: score a seeded sample of that many labelled nodes above it
    (``labelled_set``; the result then says ``sampled``). None = every labelled node.
    ``bootstrap`` > 0: each split's F1 also gets a bootstrap interval over its test nodes
    (``*_ci95``, eval.mode=sampled); ``spectrum_rows``, ``spectrum_rank``: see
    ``labelled_set_of_rows``; ``small_ratio``, ``small_repeats``: see ``protocol_splits``; ``norms``:
    the table's row norms (`row_norms` of every row), when the caller has them.
    """
    ls = labelled_set(X, node_idx, label_idx, normalize=normalize, multilabel=multilabel, max_nodes=max_nodes,
                      seed=seed, threads=threads, spectrum_rows=spectrum_rows, spectrum_rank=spectrum_rank,
                      norms=norms)
    chain = split_chain_f1(ls, protocol_splits(ratios, repeats, small_ratio, small_repeats), seed=seed, C=C,
                           tol=tol, threads=threads, bootstrap=bootstrap,
                           full_ratios=full_ratios(ratios, repeats, small_ratio, small_repeats))
    f1 = {(c[0], c[1]): (c[2], c[3]) for c in chain}
    sd = {(c[0], c[1]): (c[4], c[5]) for c in chain} if bootstrap else None
    return classification_summary(ls.info(), ratios, repeats, f1, sd)
