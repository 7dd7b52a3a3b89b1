"""Codecs that need no training: fp16, row-wise int8 / int4 with a per-row scale and bias, and
sign bits (binary).

Row-wise int-N follows the layout of FBGEMM's quantised embedding tables (TorchRec's
``QuantEmbeddingBagCollection`` / the inference TBE kernels): each row keeps its own ``scale``
and ``bias`` (= the row minimum), codes are ``round((x - bias) / scale)`` in 0..2^N-1, and int4
packs two codes per byte, element 2j in the low nibble. FBGEMM stores scale and bias as fp16 in a
4-byte row header; we keep them as two columns (``scale_dtype`` float16 like FBGEMM, or float32).

Why the rounding directions below: with fp16 scale/bias the stored values differ from the exact
min / range, and a naive conversion can push the row minimum below the bias (negative code) or the
maximum above the top code (clipped), breaking the |x - x_hat| <= scale/2 guarantee. So the bias is
rounded down and the scale up; every element then maps into range and the bound holds exactly
(up to float32 rounding of the decode).

Binary keeps one bit per element (1 iff x > 0, packed little-endian: element j is bit j % 8 of
byte j // 8) plus a per-row scale mean(|x|), the least-squares scale for sign codes, so decoding
gives +-scale. It is a coarse search tier (Hamming distance on the bits), re-scored against a finer
table (int8) when searching.

Speed: every encoder / decoder is one numba kernel, parallel over blocks of rows and free of the
GIL, that reads each row once (a row is a few hundred bytes, so its min/max pass and its code pass
both hit L1) and writes only the output: no [n, d] temporaries. The kernels reproduce, bit for bit,
the earlier numpy formulation (kept in tests/test_codec_scalar.py as the reference) so tables
written before stay readable and re-encoding gives the same bytes:
- scale / bias are rounded to the float16 / float32 grid towards -inf / +inf in float64, exactly
  what ``astype`` + one ``nextafter`` step did (saturating at the largest finite value the same way);
- the binary scale is numpy's float32 ``mean``: the same 8-accumulator pairwise summation order;
- fp16 conversion is IEEE round-to-nearest-even done on the bits (numba has no float16 type).
One difference, on purpose: a row whose min (or max) is a zero present as both +0.0 and -0.0 may
store the other signed zero as bias (scale) than numpy did. Ours orders -0.0 below +0.0 (integer
keys, see _row_minmax); numpy's min/max reductions pick the sign by their SIMD lane order, which
changes with d and with the CPU's dispatch. Decoded values are bit-identical either way
(q * scale >= +0, and +0 + -0 = +0).
Thread count: the kernels use numba's pool (``numba.set_num_threads``).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from embedlake.workers.kernel_inputs import read_only

F16_MAX = 65504.0
F32_MAX = float(np.finfo(np.float32).max)
SCALE_DTYPES = {"float16": np.float16, "float32": np.float32}
# (significand bits incl. the implicit one, smallest normal exponent, largest finite value)
_GRID = {"float16": (11, -14, F16_MAX), "float32": (24, -126, F32_MAX)}
_ROWS = 256          # rows per parallel block: large enough to amortise scheduling, small for balance

_KERNEL = dict(cache=True, nogil=True, error_model="numpy")


def _blocks(n: int) -> int:
    return (n + _ROWS - 1) // _ROWS


@intrinsic
def _f64_bits(typingctx, x):
    """The IEEE bits of a float64 as int64 (a register bitcast; numba has no scalar view)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@nb.njit(inline="always", **_KERNEL)
def _round_grid(v, p, emin, maxv, up):
    """float64 v rounded towards +inf (up) or -inf onto the grid of a binary float with `p`
    significand bits, smallest normal exponent `emin` and largest finite value `maxv`.

    Equals ``h = v.astype(dtype); if h is on the wrong side of v: h = nextafter(h, +-inf)``:
    the directed rounding, -0.0 kept, and a value past the largest finite one goes to +-inf in
    the rounding direction and to +-maxv against it. Done on the bits (no libm calls): in the
    target's normal range clear the low 53 - p significand bits, adding one target ulp when
    rounding the magnitude away from zero (the carry into the exponent is the right next value);
    below it, the grid step is 2^(emin - p + 1) and v / step is rounded exactly in float64."""
    if v == 0.0 or not math.isfinite(v):
        return v
    u = _f64_bits(v)
    neg = u < 0
    mag = u & 0x7FFFFFFFFFFFFFFF
    away = up != neg                        # round the magnitude away from zero?
    if (mag >> 52) - 1023 >= emin:
        drop = 53 - p
        low = mag & ((np.int64(1) << drop) - 1)
        mag -= low
        if away and low != 0:
            mag += np.int64(1) << drop
        r = _bits_f64(mag)
    else:
        inv_step = _bits_f64(np.int64(1023 + p - 1 - emin) << 52)     # 2^(p-1-emin), exact
        a = _bits_f64(mag) * inv_step
        a = np.ceil(a) if away else np.floor(a)
        r = a / inv_step
    if neg:
        r = -r
    if r > maxv:
        r = math.inf if up else maxv
    elif r < -maxv:
        r = -maxv if up else -math.inf
    return r


# ----------------------------------------------------------------------------- fp16

@nb.njit(parallel=True, **_KERNEL)
def _f32_to_f16(X, Xi, out, bad):
    """IEEE float32 -> float16 bits, round to nearest even. Normal results: add the exponent
    rebias plus the round-half-even increment to the bits and shift; subnormal results (|x| <
    2^-14): the half's bits are rint(|x| * 2^24) (1024 lands on the smallest normal's bits).
    bad[block] = 1 if a value is not <= F16_MAX in magnitude (overflow, inf, NaN)."""
    n, d = X.shape
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        flag = 0
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            for j in range(d):
                u = Xi[i, j]
                a = u & np.int32(0x7FFFFFFF)
                sign = (u >> np.int32(16)) & np.int32(0x8000)
                norm = (a - np.int32(112 << 23) + np.int32(0xFFF) + ((a >> np.int32(13)) & np.int32(1))) >> np.int32(13)
                sub = np.int32(np.rint(abs(X[i, j]) * np.float32(16777216.0)))
                h = sub if a < np.int32(113 << 23) else norm
                flag |= np.int64(a > np.int32(0x477FE000))        # |x| > 65504 or inf / NaN
                out[i, j] = np.uint16(h | sign)
        bad[blk] = flag


@nb.njit(parallel=True, **_KERNEL)
def _f16_to_f32(H, out):
    """float16 bits -> float32 bits (exact): normal halves rebias the exponent on the bits (inf /
    NaN get the all-ones exponent, payload kept); subnormal halves m * 2^-24 are float32(m) *
    2^-24, a normal float32, so no denormal arithmetic (flush-to-zero modes cannot bite)."""
    n, d = H.shape
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            for j in range(d):
                h = np.int32(H[i, j])
                em = h & np.int32(0x7FFF)
                norm = (em << np.int32(13)) + np.int32(112 << 23)
                norm = norm + np.int32(112 << 23) if em >= np.int32(0x7C00) else norm
                sub = _f32_bits(np.float32(em) * np.float32(2.0 ** -24))
                r = sub if em < np.int32(0x400) else norm
                out[i, j] = np.uint32(r | ((h & np.int32(0x8000)) << np.int32(16)))


def encode_fp16(X: np.ndarray) -> dict[str, np.ndarray]:
    [X] = read_only(np.ascontiguousarray(X, dtype=np.float32))     # one compile of the kernel (kernel_inputs)
    n, d = X.shape
    out = np.empty((n, d), dtype=np.uint16)
    bad = np.zeros(_blocks(n), dtype=np.int64)
    _f32_to_f16(X, X.view(np.int32), out, bad)
    if bad.any():
        big = max(float(X.max()), -float(X.min()))
        raise ValueError(f"fp16 codec: values up to {big:.3g} overflow float16 (max {F16_MAX})")
    return {"code": out.view(np.uint8).reshape(n, 2 * d)}


def decode_fp16(cols: dict, dim: int) -> np.ndarray:
    code = np.ascontiguousarray(cols["code"], dtype=np.uint8)
    H = code.view(np.uint16).reshape(code.shape[0], dim)
    out = np.empty((code.shape[0], dim), dtype=np.float32)
    _f16_to_f32(H, out.view(np.uint32))
    return out


# ----------------------------------------------------------------------------- row-wise int-N

@nb.njit(inline="always", **_KERNEL)
def _row_minmax(Xi, i, d):
    """Row min and max of float32 values given as their int32 bits. Each is mapped to an int32
    key ordered like the floats (negatives: magnitude bits flipped), so the reduction is integer
    min/max, which LLVM vectorises (float min/max reductions it does not, NaN rules). -0.0 orders
    below +0.0 here, which is why the sign of a zero min/max may differ from numpy's (module
    docstring). Rows are NaN-free (NaN has no code)."""
    if d == 0:
        return 0.0, 0.0
    a = Xi[i, 0]
    mn = a ^ ((a >> np.int32(31)) & np.int32(0x7FFFFFFF))
    mx = mn
    for j in range(1, d):
        a = Xi[i, j]
        k = a ^ ((a >> np.int32(31)) & np.int32(0x7FFFFFFF))
        mn = min(mn, k)
        mx = max(mx, k)
    mn = np.int32(mn)
    mx = np.int32(mx)
    mn = mn ^ ((mn >> np.int32(31)) & np.int32(0x7FFFFFFF))       # the map is its own inverse
    mx = mx ^ ((mx >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return np.float64(_bits_f32(np.int32(mn))), np.float64(_bits_f32(np.int32(mx)))


@nb.njit(inline="always", **_KERNEL)
def _q(x, b, inv, levels):
    q = np.floor((np.float64(x) - b) * inv + 0.5)
    q = 0.0 if q < 0.0 else q
    q = levels if q > levels else q
    return np.uint8(q)


@nb.njit(parallel=True, **_KERNEL)
def _rowwise_kernel(X, Xi, bits, p, emin, maxv, check16, write_codes, scale, bias, code, bad):
    """Per row: min/max, bias = min rounded down, scale = (max - bias) / levels rounded up (both
    on the scale dtype's grid, in float64), then codes floor((x - bias) / scale + 0.5) clipped to
    0..levels (int4: element 2j in the low nibble of byte j). bad[block] = 1 when check16 and a
    row's values or step do not fit a float16 scale/bias (|v| or step > F16_MAX / 2)."""
    n, d = X.shape
    levels = np.float64((1 << bits) - 1)
    lim = F16_MAX / 2
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        flag = 0
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            lo, hi = _row_minmax(Xi, i, d)
            if check16 and (-lo > lim or hi > lim or (hi - lo) / levels > lim):
                flag = 1
            b = _round_grid(lo, p, emin, maxv, False)
            s = _round_grid((hi - b) / levels, p, emin, maxv, True)
            bias[i] = b
            scale[i] = s
            if not write_codes:
                continue
            inv = 1.0 / s if s > 0 else 0.0
            if bits == 8:
                for j in range(d):
                    code[i, j] = _q(X[i, j], b, inv, levels)
            else:
                for jj in range(d >> 1):
                    code[i, jj] = (_q(X[i, 2 * jj], b, inv, levels)
                                   | (_q(X[i, 2 * jj + 1], b, inv, levels) << np.uint8(4)))
                if d & 1:
                    code[i, d >> 1] = _q(X[i, d - 1], b, inv, levels)
        bad[blk] = flag


def _rowwise(X: np.ndarray, bits: int, scale_dtype: str, write_codes: bool):
    if scale_dtype not in _GRID:
        raise KeyError(scale_dtype)
    [X] = read_only(np.ascontiguousarray(X, dtype=np.float32))     # one compile of the kernel (kernel_inputs)
    n, d = X.shape
    p, emin, maxv = _GRID[scale_dtype]
    s64, b64 = np.empty(n), np.empty(n)
    width = (d if bits == 8 else (d + 1) // 2) if write_codes else 0
    code = np.empty((n, width), dtype=np.uint8)
    bad = np.zeros(_blocks(n), dtype=np.int64)
    _rowwise_kernel(X, X.view(np.int32), bits, p, emin, maxv, scale_dtype == "float16" and X.size > 0, write_codes,
                    s64, b64, code, bad)
    if bad.any():
        raise ValueError("int codec: values too large for float16 scale/bias; use scale_dtype=float32")
    dt = SCALE_DTYPES[scale_dtype]
    return code, s64.astype(dt), b64.astype(dt)      # exact: the values are on dt's grid


def rowwise_scale_bias(X: np.ndarray, bits: int, scale_dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """Per-row (scale, bias) in `scale_dtype`, bias <= row min and bias + levels*scale >= row max."""
    _, scale, bias = _rowwise(X, bits, scale_dtype, write_codes=False)
    return scale, bias


def encode_rowwise(X: np.ndarray, bits: int, scale_dtype: str = "float16") -> dict[str, np.ndarray]:
    """int8 (bits=8) or int4 (bits=4): codes (n, d) or (n, ceil(d/2)) uint8 + scale + bias."""
    if bits not in (4, 8):
        raise ValueError(f"row-wise codec supports 4 or 8 bits, not {bits}")
    code, scale, bias = _rowwise(X, bits, scale_dtype, write_codes=True)
    return {"code": code, "scale": scale, "bias": bias}


def unpack_codes(code: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """(n, dim) integer codes 0..2^bits-1 from the stored bytes."""
    code = np.asarray(code, dtype=np.uint8)
    if bits == 8:
        return code[:, :dim]
    q = np.empty((code.shape[0], code.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = code & 0x0F
    q[:, 1::2] = code >> 4
    return q[:, :dim]


@nb.njit(parallel=True, **_KERNEL)
def _dequantise(code, scale, bias, bits, dim, out):
    """x_hat = float32(q) * scale + bias, in float32 (no FMA: numba does not contract without
    fastmath, so values equal numpy's q * s + b)."""
    n = code.shape[0]
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            s = scale[i]
            b = bias[i]
            if bits == 8:
                for j in range(dim):
                    out[i, j] = np.float32(code[i, j]) * s + b
            else:
                for jj in range(dim >> 1):
                    byte = code[i, jj]
                    out[i, 2 * jj] = np.float32(byte & np.uint8(0x0F)) * s + b
                    out[i, 2 * jj + 1] = np.float32(byte >> np.uint8(4)) * s + b
                if dim & 1:
                    out[i, dim - 1] = np.float32(code[i, dim >> 1] & np.uint8(0x0F)) * s + b


def decode_rowwise(cols: dict, bits: int, dim: int) -> np.ndarray:
    """x_hat = q * scale + bias in float32 (fused, no temporaries)."""
    out = np.empty((cols["code"].shape[0], dim), dtype=np.float32)
    _dequantise(np.ascontiguousarray(cols["code"], dtype=np.uint8), np.asarray(cols["scale"], dtype=np.float32),
                np.asarray(cols["bias"], dtype=np.float32), bits, dim, out)
    return out


# ----------------------------------------------------------------------------- binary

@nb.njit(inline="always", **_KERNEL)
def _pairwise_leaf(X, i, start, n):
    """sum |X[i, start:start+n]|, n <= 128, in float32 in numpy's order (loops_utils.h
    pairwise_sum: < 8 terms sequential, else 8 interleaved accumulators then the rest)."""
    if n < 8:
        res = np.float32(0.0)
        for t in range(n):
            res += abs(X[i, start + t])
        return res
    r0 = abs(X[i, start])
    r1 = abs(X[i, start + 1])
    r2 = abs(X[i, start + 2])
    r3 = abs(X[i, start + 3])
    r4 = abs(X[i, start + 4])
    r5 = abs(X[i, start + 5])
    r6 = abs(X[i, start + 6])
    r7 = abs(X[i, start + 7])
    t = 8
    stop = n - n % 8
    while t < stop:
        c = start + t
        r0 += abs(X[i, c])
        r1 += abs(X[i, c + 1])
        r2 += abs(X[i, c + 2])
        r3 += abs(X[i, c + 3])
        r4 += abs(X[i, c + 4])
        r5 += abs(X[i, c + 5])
        r6 += abs(X[i, c + 6])
        r7 += abs(X[i, c + 7])
        t += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while t < n:
        res += abs(X[i, start + t])
        t += 1
    return res


@nb.njit(**_KERNEL)
def _pairwise_abs_sum(X, i, d, frames, partial):
    """sum |X[i, :d]| in float32 exactly as ``np.abs(X).mean(axis=1)`` sums it: numpy's pairwise
    summation, which above 128 terms splits at n/2 rounded down to a multiple of 8 and adds the two
    halves' sums. Walked with an explicit stack (frames[k] = start, length, left-half-done;
    partial[k] = that left sum): a recursive numba function segfaults when loaded from the cache."""
    if d <= 128:
        return _pairwise_leaf(X, i, 0, d)
    top = 0
    frames[0, 0] = 0
    frames[0, 1] = d
    while True:
        s = frames[top, 0]
        n = frames[top, 1]
        if n > 128:                           # descend into the left half
            n2 = n // 2
            n2 -= n2 % 8
            frames[top, 2] = 0
            top += 1
            frames[top, 0] = s
            frames[top, 1] = n2
            continue
        ret = _pairwise_leaf(X, i, s, n)
        top -= 1
        while top >= 0 and frames[top, 2] == 1:   # both halves done: left + right, go up
            ret = partial[top] + ret
            top -= 1
        if top < 0:
            return ret
        partial[top] = ret                    # left half done: now the right half
        frames[top, 2] = 1
        n2 = frames[top, 1] // 2
        n2 -= n2 % 8
        s = frames[top, 0] + n2
        n = frames[top, 1] - n2
        top += 1
        frames[top, 0] = s
        frames[top, 1] = n


@nb.njit(parallel=True, **_KERNEL)
def _binary_kernel(X, p, emin, maxv, code, scale):
    n, d = X.shape
    full = d >> 3
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        frames = np.zeros((64, 3), dtype=np.int64)       # pairwise-sum stack: depth <= log2(d)
        partial = np.zeros(64, dtype=np.float32)
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            for k in range(full):
                c = 8 * k
                byte = 0
                for t in range(8):
                    byte |= np.int64(X[i, c + t] > 0) << t
                code[i, k] = np.uint8(byte)
            if d & 7:
                byte = 0
                for t in range(d - 8 * full):
                    byte |= np.int64(X[i, 8 * full + t] > 0) << t
                code[i, full] = np.uint8(byte)
            mean = np.float32(np.float64(_pairwise_abs_sum(X, i, d, frames, partial)) / d)
            scale[i] = _round_grid(np.float64(mean), p, emin, maxv, False)


def encode_binary(X: np.ndarray, scale_dtype: str = "float16") -> dict[str, np.ndarray]:
    [X] = read_only(np.ascontiguousarray(X, dtype=np.float32))     # one compile of the kernel (kernel_inputs)
    n, d = X.shape
    p, emin, maxv = _GRID[scale_dtype]
    code = np.empty((n, (d + 7) // 8), dtype=np.uint8)
    s64 = np.empty(n)
    _binary_kernel(X, p, emin, maxv, code, s64)
    return {"code": code, "scale": s64.astype(SCALE_DTYPES[scale_dtype])}


@nb.njit(parallel=True, **_KERNEL)
def _binary_decode(code, scale, dim, out):
    n = code.shape[0]
    for blk in nb.prange((n + _ROWS - 1) // _ROWS):
        for i in range(blk * _ROWS, min(n, (blk + 1) * _ROWS)):
            s = scale[i]
            for j in range(dim):
                out[i, j] = s if (code[i, j >> 3] >> (j & 7)) & 1 else -s


def decode_binary(cols: dict, dim: int) -> np.ndarray:
    code = np.ascontiguousarray(cols["code"], dtype=np.uint8)
    out = np.empty((code.shape[0], dim), dtype=np.float32)
    _binary_decode(code, np.asarray(cols["scale"], dtype=np.float32), dim, out)
    return out


def _as_words(bits: np.ndarray) -> np.ndarray:
    """Packed bits (n, B) -> uint64 words (n, ceil(B/8)), zero padded."""
    n, B = bits.shape
    W = (B + 7) // 8
    buf = np.zeros((n, W * 8), dtype=np.uint8)
    buf[:, :B] = bits
    return buf.view(np.uint64)


@nb.njit(cache=True, inline="always")
def _popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@nb.njit(parallel=True, cache=True)
def _hamming(qw, tw, out):
    nq, W = qw.shape
    n = tw.shape[0]
    for a in nb.prange(nq):
        for i in range(n):
            c = np.uint64(0)
            for w in range(W):
                c += _popcount64(qw[a, w] ^ tw[i, w])
            out[a, i] = np.int32(c)


def hamming_distances(query_bits: np.ndarray, table_bits: np.ndarray) -> np.ndarray:
    """(nq, n) int32 Hamming distances between packed sign-bit rows."""
    qw, tw = _as_words(np.asarray(query_bits, np.uint8)), _as_words(np.asarray(table_bits, np.uint8))
    out = np.empty((qw.shape[0], tw.shape[0]), dtype=np.int32)
    _hamming(qw, tw, out)
    return out
