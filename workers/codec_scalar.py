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
"""
from __future__ import annotations

import numba as nb
import numpy as np

F16_MAX = 65504.0
SCALE_DTYPES = {"float16": np.float16, "float32": np.float32}


# ----------------------------------------------------------------------------- fp16

def _convert(a: np.ndarray, dtype) -> np.ndarray:
    """float32 <-> float16 (round to nearest even either way); torch's vectorised F16C path is
    ~2x faster than numpy's, same bits."""
    try:
        import torch
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float16 if dtype == np.float16
                                                            else torch.float32).numpy()
    except ImportError:     # pragma: no cover - torch is a project dependency
        return a.astype(dtype)


def encode_fp16(X: np.ndarray) -> dict[str, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    big = max(float(X.max()), -float(X.min())) if X.size else 0.0
    if not big <= F16_MAX:
        raise ValueError(f"fp16 codec: values up to {big:.3g} overflow float16 (max {F16_MAX})")
    h = np.ascontiguousarray(_convert(X, np.float16))
    return {"code": h.view(np.uint8).reshape(X.shape[0], 2 * X.shape[1])}


def decode_fp16(cols: dict, dim: int) -> np.ndarray:
    code = np.ascontiguousarray(cols["code"])
    return _convert(code.view(np.float16).reshape(code.shape[0], dim), np.float32)


# ----------------------------------------------------------------------------- row-wise int-N

def _round_dir(v: np.ndarray, dtype, up: bool) -> np.ndarray:
    """v (float64) rounded to `dtype` towards +inf (up) or -inf, elementwise."""
    h = v.astype(dtype)
    hv = h.astype(np.float64)
    bad = hv < v if up else hv > v
    if bad.any():
        h[bad] = np.nextafter(h[bad], dtype(np.inf) if up else dtype(-np.inf))
    return h


def rowwise_scale_bias(X: np.ndarray, bits: int, scale_dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """Per-row (scale, bias) in `scale_dtype`, bias <= row min and bias + levels*scale >= row max."""
    dt = SCALE_DTYPES[scale_dtype]
    levels = (1 << bits) - 1
    lo = X.min(axis=1).astype(np.float64) if X.shape[1] else np.zeros(X.shape[0])
    hi = X.max(axis=1).astype(np.float64) if X.shape[1] else np.zeros(X.shape[0])
    if dt is np.float16 and X.size and max(-lo.min(), hi.max(), (hi - lo).max() / levels) > F16_MAX / 2:
        raise ValueError("int codec: values too large for float16 scale/bias; use scale_dtype=float32")
    bias = _round_dir(lo, dt, up=False)
    scale = _round_dir((hi - bias.astype(np.float64)) / levels, dt, up=True)
    return scale, bias


@nb.njit(cache=True)
def _quantise(X, inv, bias, levels, out):
    n, d = X.shape
    for i in range(n):
        b = np.float64(bias[i])
        s = inv[i]
        for j in range(d):
            q = np.floor((np.float64(X[i, j]) - b) * s + 0.5)
            if q < 0:
                q = 0
            elif q > levels:
                q = levels
            out[i, j] = np.uint8(q)


@nb.njit(cache=True)
def _pack_nibbles(Q, out):
    n, d = Q.shape
    for i in range(n):
        for j in range(0, d, 2):
            lo = Q[i, j]
            hi = Q[i, j + 1] if j + 1 < d else np.uint8(0)
            out[i, j // 2] = np.uint8(lo | (hi << 4))


def encode_rowwise(X: np.ndarray, bits: int, scale_dtype: str = "float16") -> dict[str, np.ndarray]:
    """int8 (bits=8) or int4 (bits=4): codes (n, d) or (n, ceil(d/2)) uint8 + scale + bias."""
    if bits not in (4, 8):
        raise ValueError(f"row-wise codec supports 4 or 8 bits, not {bits}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    scale, bias = rowwise_scale_bias(X, bits, scale_dtype)
    s64 = scale.astype(np.float64)
    inv = np.divide(1.0, s64, out=np.zeros_like(s64), where=s64 > 0)
    Q = np.empty((n, d), dtype=np.uint8)
    _quantise(X, inv, bias.astype(np.float64), (1 << bits) - 1, Q)
    if bits == 4:
        P = np.empty((n, (d + 1) // 2), dtype=np.uint8)
        _pack_nibbles(Q, P)
        Q = P
    return {"code": Q, "scale": scale, "bias": bias}


def unpack_codes(code: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """(n, dim) integer codes 0..2^bits-1 from the stored bytes."""
    code = np.asarray(code, dtype=np.uint8)
    if bits == 8:
        return code[:, :dim]
    q = np.empty((code.shape[0], code.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = code & 0x0F
    q[:, 1::2] = code >> 4
    return q[:, :dim]


@nb.njit(parallel=True, cache=True)
def _dequantise(code, scale, bias, bits, dim, out):
    n = code.shape[0]
    for i in nb.prange(n):
        s = scale[i]
        b = bias[i]
        if bits == 8:
            for j in range(dim):
                out[i, j] = np.float32(code[i, j]) * s + b
        else:
            for j in range(dim):
                byte = code[i, j >> 1]
                q = (byte & 0x0F) if (j & 1) == 0 else (byte >> 4)
                out[i, j] = np.float32(q) * s + b


def decode_rowwise(cols: dict, bits: int, dim: int) -> np.ndarray:
    """x_hat = q * scale + bias in float32 (fused, no temporaries)."""
    out = np.empty((cols["code"].shape[0], dim), dtype=np.float32)
    _dequantise(np.ascontiguousarray(cols["code"], dtype=np.uint8), np.asarray(cols["scale"], dtype=np.float32),
                np.asarray(cols["bias"], dtype=np.float32), bits, dim, out)
    return out


# ----------------------------------------------------------------------------- binary

def encode_binary(X: np.ndarray, scale_dtype: str = "float16") -> dict[str, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    bits = np.packbits(X > 0, axis=1, bitorder="little")
    scale = _round_dir(np.abs(X).mean(axis=1).astype(np.float64), SCALE_DTYPES[scale_dtype], up=False)
    return {"code": bits, "scale": scale}


def decode_binary(cols: dict, dim: int) -> np.ndarray:
    b = np.unpackbits(np.asarray(cols["code"], dtype=np.uint8), axis=1, bitorder="little")[:, :dim]
    s = np.asarray(cols["scale"], dtype=np.float32)[:, None]
    return np.where(b.astype(bool), s, -s).astype(np.float32)


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
