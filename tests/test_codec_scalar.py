"""The numba scalar codecs give exactly the bytes of the earlier numpy formulation.

`_reference_*` below is workers/compress/scalar.py as it was before the kernels (commit 65d78d3),
copied verbatim: tables written by it must stay readable and re-encode to the same bytes. Every
comparison is exact (codes byte for byte, scale/bias bit for bit)."""
import numba
import numpy as np
import pytest

from embedlake.workers.compress import scalar as cs

# the reference's float16 rounding of out-of-range scales casts through inf on purpose
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

F16_MAX = 65504.0
SCALE_DTYPES = {"float16": np.float16, "float32": np.float32}


# ----------------------------------------------------------------------------- reference (verbatim)

def _reference_convert(a, dtype):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float16 if dtype == np.float16
                                                        else torch.float32).numpy()


def _reference_encode_fp16(X):
    X = np.asarray(X, dtype=np.float32)
    big = max(float(X.max()), -float(X.min())) if X.size else 0.0
    if not big <= F16_MAX:
        raise ValueError(f"fp16 codec: values up to {big:.3g} overflow float16 (max {F16_MAX})")
    h = np.ascontiguousarray(_reference_convert(X, np.float16))
    return {"code": h.view(np.uint8).reshape(X.shape[0], 2 * X.shape[1])}


def _reference_decode_fp16(cols, dim):
    code = np.ascontiguousarray(cols["code"])
    return _reference_convert(code.view(np.float16).reshape(code.shape[0], dim), np.float32)


def _reference_round_dir(v, dtype, up):
    h = v.astype(dtype)
    hv = h.astype(np.float64)
    bad = hv < v if up else hv > v
    if bad.any():
        h[bad] = np.nextafter(h[bad], dtype(np.inf) if up else dtype(-np.inf))
    return h


def _reference_rowwise_scale_bias(X, bits, scale_dtype="float16"):
    dt = SCALE_DTYPES[scale_dtype]
    levels = (1 << bits) - 1
    lo = X.min(axis=1).astype(np.float64) if X.shape[1] else np.zeros(X.shape[0])
    hi = X.max(axis=1).astype(np.float64) if X.shape[1] else np.zeros(X.shape[0])
    if dt is np.float16 and X.size and max(-lo.min(), hi.max(), (hi - lo).max() / levels) > F16_MAX / 2:
        raise ValueError("int codec: values too large for float16 scale/bias; use scale_dtype=float32")
    bias = _reference_round_dir(lo, dt, up=False)
    scale = _reference_round_dir((hi - bias.astype(np.float64)) / levels, dt, up=True)
    return scale, bias


@numba.njit(cache=True)
def _reference_quantise(X, inv, bias, levels, out):
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


@numba.njit(cache=True)
def _reference_pack_nibbles(Q, out):
    n, d = Q.shape
    for i in range(n):
        for j in range(0, d, 2):
            lo = Q[i, j]
            hi = Q[i, j + 1] if j + 1 < d else np.uint8(0)
            out[i, j // 2] = np.uint8(lo | (hi << 4))


def _reference_encode_rowwise(X, bits, scale_dtype="float16"):
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    scale, bias = _reference_rowwise_scale_bias(X, bits, scale_dtype)
    s64 = scale.astype(np.float64)
    inv = np.divide(1.0, s64, out=np.zeros_like(s64), where=s64 > 0)
    Q = np.empty((n, d), dtype=np.uint8)
    _reference_quantise(X, inv, bias.astype(np.float64), (1 << bits) - 1, Q)
    if bits == 4:
        P = np.empty((n, (d + 1) // 2), dtype=np.uint8)
        _reference_pack_nibbles(Q, P)
        Q = P
    return {"code": Q, "scale": scale, "bias": bias}


def _reference_decode_rowwise(cols, bits, dim):
    q = cs.unpack_codes(cols["code"], bits, dim).astype(np.float32)
    return q * np.asarray(cols["scale"], np.float32)[:, None] + np.asarray(cols["bias"], np.float32)[:, None]


def _reference_encode_binary(X, scale_dtype="float16"):
    X = np.asarray(X, dtype=np.float32)
    bits = np.packbits(X > 0, axis=1, bitorder="little")
    scale = _reference_round_dir(np.abs(X).mean(axis=1).astype(np.float64), SCALE_DTYPES[scale_dtype], up=False)
    return {"code": bits, "scale": scale}


def _reference_decode_binary(cols, dim):
    b = np.unpackbits(np.asarray(cols["code"], dtype=np.uint8), axis=1, bitorder="little")[:, :dim]
    s = np.asarray(cols["scale"], dtype=np.float32)[:, None]
    return np.where(b.astype(bool), s, -s).astype(np.float32)


# ----------------------------------------------------------------------------- data

def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _same(got: dict, ref: dict):
    """Codes byte for byte; scale/bias bit for bit, except the sign of a zero (see the module
    docstring: numpy's min/max pick it by SIMD lane order; decoding is unaffected)."""
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        if k == "code":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)      # values (+0 == -0)
            nz = ref[k] != 0
            np.testing.assert_array_equal(_bits(got[k])[nz], _bits(ref[k])[nz], err_msg=k)


def _awkward(d, seed=0, n=400):
    """Rows of every kind the codecs meet: ranges from 1e-30 to 3e4, constant rows (positive,
    negative, zero, fp16-inexact), all-negative rows, integer rows with exact .5 ties under the
    int-N step, fp16 / fp32 subnormals, and rows with a single element far from the rest."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X *= np.logspace(-30, 4.5, n, dtype=np.float64).astype(np.float32)[rng.permutation(n), None]
    X[0] = 1.25
    X[1] = 0.0
    X[2] = -3.1
    X[3] = 0.1
    X[4] = -np.abs(X[4]) - 2.0
    X[5] = rng.integers(0, 16, d)
    X[6] = rng.integers(-255, 256, d) / 2
    X[7] = rng.standard_normal(d) * 2.0 ** -20          # fp16 subnormal range
    X[8] = rng.standard_normal(d) * np.float32(2.0 ** -140)   # fp32 subnormals
    X[9] = rng.standard_normal(d)
    X[9, 0] = 1000.0
    X[10, ::2] = -7.0
    X[11] = 0.0
    X[11, -1] = -0.0
    X[12] = np.linspace(-1, 1, d)
    return X


DIMS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 37, 64, 128, 129, 136, 300]


# ----------------------------------------------------------------------------- fp16

def test_fp16_every_half_and_every_tie():
    """Each finite half, the float32 midpoints between neighbouring halves (ties to even) and
    their float32 neighbours convert as IEEE round-to-nearest-even; every half (inf/NaN too)
    decodes like numpy."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = h.view(np.float16).astype(np.float32)
    fin = np.sort(f[np.isfinite(f) & (np.abs(f) <= F16_MAX)])
    mid = ((fin[1:].astype(np.float64) + fin[:-1]) / 2).astype(np.float32)
    cand = np.concatenate([fin, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
                           np.float32([0.0, -0.0, 2.0 ** -149, -(2.0 ** -149), 2.0 ** -126, F16_MAX])])
    cand = cand[np.abs(cand) <= F16_MAX]
    X = np.resize(cand, (cand.size + 255) // 256 * 256).reshape(-1, 256)
    got = cs.encode_fp16(X)
    _same(got, _reference_encode_fp16(X))
    np.testing.assert_array_equal(got["code"].view(np.uint16), X.astype(np.float16).view(np.uint16))
    D = cs.decode_fp16({"code": h.view(np.uint8).reshape(256, 512)}, 256).ravel()
    R = h.view(np.float16).astype(np.float32)
    nan = np.isnan(R)
    assert np.array_equal(np.isnan(D), nan)
    np.testing.assert_array_equal(_bits(D)[~nan], _bits(R)[~nan])


@pytest.mark.parametrize("d", DIMS)
def test_fp16_matches_reference(d):
    X = _awkward(d)
    X = np.clip(X, -F16_MAX, F16_MAX)
    got = cs.encode_fp16(X)
    _same(got, _reference_encode_fp16(X))
    np.testing.assert_array_equal(_bits(cs.decode_fp16(got, d)), _bits(_reference_decode_fp16(got, d)))


@pytest.mark.parametrize("v", [65504.5, 65519.0, 65520.0, 1e5, np.inf, -np.inf, np.nan, -70000.0])
def test_fp16_overflow_raises_like_reference(v):
    X = np.zeros((300, 5), np.float32)
    X[257, 3] = v
    with pytest.raises(ValueError, match="overflow") as ref:
        _reference_encode_fp16(X)
    with pytest.raises(ValueError, match="overflow") as got:
        cs.encode_fp16(X)
    assert str(got.value) == str(ref.value)
    X[257, 3] = -F16_MAX                      # the largest half is fine
    _same(cs.encode_fp16(X), _reference_encode_fp16(X))


# ----------------------------------------------------------------------------- row-wise int-N

@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("d", DIMS)
def test_rowwise_matches_reference(d, bits, scale_dtype):
    X = _awkward(d, seed=d)
    X[np.abs(X) > 30000] = 30000.0            # float16 scale/bias limit (F16_MAX / 2)
    got = cs.encode_rowwise(X, bits, scale_dtype)
    _same(got, _reference_encode_rowwise(X, bits, scale_dtype))
    np.testing.assert_array_equal(_bits(cs.decode_rowwise(got, bits, d)),
                                  _bits(_reference_decode_rowwise(got, bits, d)))
    s, b = cs.rowwise_scale_bias(X, bits, scale_dtype)
    _same({"scale": s, "bias": b}, {"scale": got["scale"], "bias": got["bias"]})


@pytest.mark.parametrize("bits", [8, 4])
def test_rowwise_float32_extremes_and_fp16_limit(bits):
    """float32 scales reach the float32 range; float16 ones refuse values past F16_MAX / 2 with the
    reference's error, and take F16_MAX / 2 itself."""
    X = _awkward(37, seed=3)
    X[20] = np.float32(3e38)
    X[21, ::3] = np.float32(-3.4e38)
    X[22] = np.float32(1e-44)
    _same(cs.encode_rowwise(X, bits, "float32"), _reference_encode_rowwise(X, bits, "float32"))
    Y = np.zeros((300, 2), np.float32)
    Y[1] = [F16_MAX / 2, -F16_MAX / 2]
    _same(cs.encode_rowwise(Y, bits, "float16"), _reference_encode_rowwise(Y, bits, "float16"))
    for row in (np.float32([40000.0, 0.0]), np.float32([-40000.0, 1.0]), np.float32([32753.0, 0.0])):
        Y = np.zeros((300, 2), np.float32)
        Y[290] = row
        with pytest.raises(ValueError, match="too large for float16") as ref:
            _reference_encode_rowwise(Y, bits, "float16")
        with pytest.raises(ValueError, match="too large for float16") as got:
            cs.encode_rowwise(Y, bits, "float16")
        assert str(got.value) == str(ref.value)


# ----------------------------------------------------------------------------- binary

@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("d", DIMS + [1000, 1031])
def test_binary_matches_reference(d, scale_dtype):
    X = _awkward(d, seed=d + 1)
    X[13] = 1e5                                # mean |x| past float16: saturates at 65504
    got = cs.encode_binary(X, scale_dtype)
    _same(got, _reference_encode_binary(X, scale_dtype))
    np.testing.assert_array_equal(_bits(cs.decode_binary(got, d)), _bits(_reference_decode_binary(got, d)))


# ----------------------------------------------------------------------------- layouts, shapes, threads

def test_odd_inputs_match_reference():
    """Strided views, float64 input, empty tables and zero-width rows behave like the reference."""
    X = _awkward(74, seed=5)
    X[np.abs(X) > 30000] = 30000.0
    for Y in (X[:, ::2], X[::3], X.astype(np.float64), X[:0]):
        _same(cs.encode_fp16(Y), _reference_encode_fp16(Y))
        _same(cs.encode_binary(Y), _reference_encode_binary(Y))
        for bits in (8, 4):
            _same(cs.encode_rowwise(Y, bits), _reference_encode_rowwise(Y, bits))
    Z = np.zeros((5, 0), np.float32)
    _same(cs.encode_fp16(Z), _reference_encode_fp16(Z))
    for bits in (8, 4):
        _same(cs.encode_rowwise(Z, bits), _reference_encode_rowwise(Z, bits))


def test_results_do_not_depend_on_thread_count():
    X = np.random.default_rng(7).standard_normal((5000, 37)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        outs = []
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            outs.append([cs.encode_fp16(X), cs.encode_rowwise(X, 8), cs.encode_rowwise(X, 4, "float32"),
                         cs.encode_binary(X)])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(outs[0], outs[-1]):
        _same(a, b)
