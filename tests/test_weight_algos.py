"""qc.quant.weight_algos: RTN bounds and shapes, GPTQ and AWQ against RTN on output error."""
from __future__ import annotations

import numpy as np
import pytest

from qc.quant.weight_algos import IntGrid, awq_scales, dequantize, gptq, quantize_rtn

AXES = {"tensor": (None, None), "channel": (1, None), "block": (0, "bs")}


def dq(q, scale, zp, granularity, block_size=32):
    axis, block = AXES[granularity]
    return dequantize(q, scale, zp, axis, block_size if block else None)


def expanded(p, granularity, shape, block_size=32):
    p = np.asarray(p, np.float64)
    if granularity == "tensor":
        return np.broadcast_to(p, shape)
    if granularity == "channel":
        return np.broadcast_to(p[None, :], shape)
    return np.repeat(p, block_size, axis=0)[: shape[0]]


def correlated_inputs(rng, rows: int, k: int) -> np.ndarray:
    """Rows with strongly correlated features (a random mixing matrix) and uneven feature scales."""
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    x = rng.standard_normal((rows, k)) @ mix.T
    return (x * rng.uniform(0.2, 3.0, size=k)).astype(np.float32)


CASES = [(bits, gran, sym, signed) for bits in (8, 4) for gran in ("tensor", "channel", "block")
         for sym, signed in ((True, True), (True, False), (False, False), (False, True))]


@pytest.mark.parametrize("bits,granularity,symmetric,signed", CASES)
def test_rtn_round_trip_within_half_a_step(bits, granularity, symmetric, signed):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((100, 24)) * rng.uniform(0.01, 2.0, size=24)).astype(np.float32)
    w[:, 3] = 0.0                      # an all-zero channel
    w[:, 5] = np.abs(w[:, 5])          # a channel without negatives
    q, scale, zp = quantize_rtn(w, bits, granularity, 32, symmetric, signed)
    assert np.all(scale > 0) and scale.dtype == np.float32
    grid = IntGrid(bits, symmetric, signed)
    assert q.min() >= grid.storage_min and q.max() <= grid.storage_max
    if symmetric:
        assert np.all(zp == (0 if signed else 1 << (bits - 1)))
        codes = q.astype(int) - zp.astype(int).reshape(np.shape(zp)).mean()
        # 8-bit: -127..127 (the -128 code unused); 4-bit: the whole -8..7 (the scale is max(-min/8, max/7))
        assert codes.max() <= grid.half_range and codes.min() >= -grid.half_range - (bits <= 4)
    err = np.abs(dq(q, scale, zp, granularity).astype(np.float64) - w)
    ulp = np.spacing(np.abs(w)).astype(np.float64) * 4   # float32 (q - zp) * scale rounding
    assert np.all(err <= expanded(scale, granularity, w.shape) / 2 + ulp)
    assert np.all(dq(q, scale, zp, granularity)[:, 3] == 0.0)   # zero is exact


def test_symmetric_int8_never_uses_minus_128():
    w = np.array([[-1.0, 0.5], [1.0, -0.25]], np.float32)
    q, scale, zp = quantize_rtn(w, 8, "channel", symmetric=True, signed=True)
    assert q.dtype == np.int8 and q.min() == -127 and q.max() == 127
    assert np.allclose(scale, [1 / 127, 0.5 / 127], rtol=1e-6) and np.all(zp == 0)


def test_int4_asymmetric_zero_points_in_range():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 16)).astype(np.float32) + rng.uniform(-3, 3, size=16).astype(np.float32)
    w[:, 0] += 10.0    # all positive: zp at the bottom
    w[:, 1] -= 10.0    # all negative: zp at the top
    q, scale, zp = quantize_rtn(w, 4, "block", 32, symmetric=False, signed=False)
    assert zp.dtype == np.uint8 and zp.shape == (2, 16)
    assert zp.min() >= 0 and zp.max() <= 15 and q.min() >= 0 and q.max() <= 15
    assert np.all(zp[:, 0] == 0) and np.all(zp[:, 1] == 15)
    q, scale, zp = quantize_rtn(w, 4, "block", 32, symmetric=False, signed=True)
    assert zp.min() >= -8 and zp.max() <= 7


@pytest.mark.parametrize("k,block,blocks", [(70, 32, 3), (64, 32, 2), (5, 32, 1), (33, 16, 3)])
def test_block_shapes_when_k_is_not_a_multiple(k, block, blocks):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, 7)).astype(np.float32)
    q, scale, zp = quantize_rtn(w, 4, "block", block, symmetric=True, signed=True)
    assert q.shape == (k, 7) and scale.shape == (blocks, 7) and zp.shape == (blocks, 7)
    err = np.abs(dq(q, scale, zp, "block", block) - w)
    assert np.all(err <= expanded(scale, "block", w.shape, block) / 2 + 1e-6)
    # the last (partial) block's scale comes from its own rows only
    last = w[(blocks - 1) * block:]
    assert np.allclose(scale[-1], np.maximum(-last.min(axis=0) / 8, last.max(axis=0) / 7), rtol=1e-6)
    h = np.eye(k)
    q2, scale2, zp2 = gptq(w, h, 4, "block", block, True, True)
    assert q2.shape == (k, 7) and scale2.shape == (blocks, 7) and zp2.shape == (blocks, 7)


def test_tensor_and_channel_shapes():
    w = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    _, s, z = quantize_rtn(w, 8, "tensor")
    assert s.shape == () and z.shape == ()
    _, s, z = quantize_rtn(w, 8, "channel")
    assert s.shape == (6,) and z.shape == (6,)


def test_dequantize_matches_onnx_blocked_semantics():
    q = np.arange(10 * 3).reshape(10, 3).astype(np.int8)
    scale = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], np.float32)
    zp = np.array([[0, 1, 2], [3, 4, 5]], np.int8)
    out = dequantize(q, scale, zp, axis=0, block_size=8)
    assert np.array_equal(out[7], (q[7] - zp[0]) * scale[0]) and np.array_equal(out[9], (q[9] - zp[1]) * scale[1])


def output_error(x, w, w_hat):
    return float(np.linalg.norm(x.astype(np.float64) @ (w_hat.astype(np.float64) - w)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("bits,granularity,symmetric,act_order", [
    (8, "channel", True, False), (4, "block", True, False), (4, "block", False, True), (8, "tensor", False, False),
    (4, "channel", True, True)])
def test_gptq_beats_rtn_on_correlated_inputs(seed, bits, granularity, symmetric, act_order):
    rng = np.random.default_rng(seed)
    k, n = 96, 40
    x = correlated_inputs(rng, 512, k)
    w = (rng.standard_normal((k, n)) * 0.1).astype(np.float32)
    h = x.astype(np.float64).T @ x
    q, s, z = quantize_rtn(w, bits, granularity, 32, symmetric, symmetric)
    rtn = output_error(x, w, dq(q, s, z, granularity))
    q, s, z = gptq(w, h, bits, granularity, 32, symmetric, symmetric, act_order=act_order, lazy_block=48)
    grid = IntGrid(bits, symmetric, symmetric)
    assert q.min() >= grid.storage_min and q.max() <= grid.storage_max
    gptq_err = output_error(x, w, dq(q, s, z, granularity))
    assert gptq_err < 0.9 * rtn, (gptq_err, rtn)   # typically 0.4..0.8 of RTN


def test_gptq_lazy_block_size_does_not_change_the_result():
    rng = np.random.default_rng(5)
    x = correlated_inputs(rng, 256, 80)
    w = rng.standard_normal((80, 12)).astype(np.float32)
    h = x.astype(np.float64).T @ x
    a = gptq(w, h, 4, "block", 16, False, False, lazy_block=16)
    b = gptq(w, h, 4, "block", 16, False, False, lazy_block=80)
    c = gptq(w, h, 4, "block", 16, False, False, lazy_block=1)   # rounded up to one quantization block
    for u, v in ((a, b), (a, c)):
        assert np.array_equal(u[0], v[0]) and np.allclose(u[1], v[1]) and np.array_equal(u[2], v[2])


def test_gptq_dead_inputs_get_zero_weights():
    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 200, 32)
    x[:, [4, 9]] = 0.0
    w = rng.standard_normal((32, 8)).astype(np.float32)
    h = x.astype(np.float64).T @ x
    q, s, z = gptq(w, h, 8, "channel", symmetric=True, signed=True)
    assert np.all(q[[4, 9]] == 0)
    assert np.all(np.isfinite(dq(q, s, z, "channel")))


def test_gptq_with_identity_hessian_is_rtn():
    """With H = I the inputs are uncorrelated: no error is propagated and GPTQ rounds to nearest."""
    w = np.random.default_rng(4).standard_normal((40, 9)).astype(np.float32)
    for gran in ("tensor", "channel", "block"):
        a = quantize_rtn(w, 4, gran, 16, True, True)
        b = gptq(w, np.eye(40), 4, gran, 16, True, True, damp=0.0)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_gptq_rejects_a_hessian_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"Hessian must be \[8, 8\]"):
        gptq(np.zeros((8, 3), np.float32), np.eye(7))


def awq_error(x, ws, s, bits, gran, sym):
    inv = (np.float32(1) / s).astype(np.float64)
    total = 0.0
    for w in ws:
        q, sc, zp = quantize_rtn(s[:, None] * w, bits, gran, 32, sym, sym)
        total += output_error(x, w, inv[:, None] * dq(q, sc, zp, gran)) ** 2
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_awq_never_worse_than_rtn_and_better_with_outlier_channels(seed):
    rng = np.random.default_rng(seed)
    k = 128
    x = rng.standard_normal((256, k)).astype(np.float32)
    x[:, rng.choice(k, 6, replace=False)] *= 40.0        # a few salient input channels
    ws = [(rng.standard_normal((k, n)) * 0.05).astype(np.float32) for n in (48, 32)]
    abs_mean = np.abs(x).mean(axis=0)
    s = awq_scales(ws, x, abs_mean, 4, "block", 32, True, True)
    assert s.shape == (k,) and s.dtype == np.float32 and np.all(s > 0)
    rtn = awq_error(x, ws, np.ones(k, np.float32), 4, "block", True)
    awq = awq_error(x, ws, s, 4, "block", True)
    assert awq < 0.9 * rtn, (awq, rtn)
    assert s[np.argsort(abs_mean)[-6:]].min() > np.median(s)     # salient channels scaled up


def test_awq_never_worse_than_rtn_on_its_sample_without_outliers():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((64, 64)).astype(np.float32)
        w = rng.standard_normal((64, 16)).astype(np.float32)
        s = awq_scales([w], x, np.abs(x).mean(0), 4, "channel", 32, False, False, grid=10)
        rtn = awq_error(x, [w], np.ones(64, np.float32), 4, "channel", False)
        assert awq_error(x, [w], s, 4, "channel", False) <= rtn


def test_awq_with_a_hessian_instead_of_rows_agrees():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((128, 64)).astype(np.float32)
    x[:, :4] *= 30
    w = rng.standard_normal((64, 16)).astype(np.float32)
    a = awq_scales([w], x, np.abs(x).mean(0), 4, "block", 32, True, True)
    b = awq_scales([w], None, np.abs(x).mean(0), 4, "block", 32, True, True, hessian=x.astype(np.float64).T @ x)
    assert np.allclose(a, b)
