"""seqlab.ops.attention against float64 numpy references written from the papers' equations."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from jax.test_util import check_grads

from seqlab.ops import attention as A

RNG = np.random.default_rng(0)
DSA = jax.jit(A.dsa, static_argnames=("topk", "block_size", "return_indices"))


def rand(*shape):
    return RNG.standard_normal(shape)


def ref_attention(q, k, v, *, causal, scale=None, mask=None, q_offset=0, keep=None):
    """o[b,t,h] = sum_s softmax_s(scale q.k) v over visible keys (float64, loops over heads)."""
    b, t, hq, d = q.shape
    s, h = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    o = np.zeros((b, t, hq, v.shape[-1]))
    for bi in range(b):
        for hi in range(hq):
            kh = hi // (hq // h)
            logit = scale * q[bi, :, hi] @ k[bi, :, kh].T
            vis = np.ones((t, s), bool)
            if causal:
                vis &= np.arange(s)[None] <= (np.arange(t) + q_offset)[:, None]
            if mask is not None:
                vis &= mask[bi][None]
            if keep is not None:
                vis &= keep(logit, vis)
            logit = np.where(vis, logit, -np.inf)
            m = logit.max(-1, keepdims=True)
            p = np.where(vis, np.exp(logit - m), 0)
            o[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, kh]
    return o


def topk_keep(topk):
    def keep(logit, vis):
        masked = np.where(vis, logit, -np.inf)
        n = min(topk, masked.shape[1])
        kth = -np.sort(-masked, axis=-1)[:, n - 1 : n]
        return masked >= kth

    return keep


@pytest.mark.parametrize("hq,h,causal", [(4, 4, True), (4, 2, False), (6, 1, True)])
def test_attention_matches_reference(hq, h, causal):
    q, k, v = rand(2, 7, hq, 8), rand(2, 7, h, 8), rand(2, 7, h, 5)
    with jax.enable_x64(True):
        got = A.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal)
        assert_close(got, ref_attention(q, k, v, causal=causal), atol=1e-12)
    # the float32 fast path (jax.nn.dot_product_attention) on D == Dv
    v2 = rand(2, 7, h, 8)
    got = A.attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v2)), causal=causal)
    assert_close(got, ref_attention(q, k, v2, causal=causal), atol=2e-5)


def test_attention_mask_offset_and_grads():
    q, k, v = rand(2, 3, 4, 6), rand(2, 9, 2, 6), rand(2, 9, 2, 6)
    mask = RNG.random((2, 9)) > 0.3
    mask[:, 0] = True
    with jax.enable_x64(True):
        for causal, off in [(True, 4), (False, 0)]:
            got = A.attention(*map(jnp.asarray, (q, k, v)), causal=causal, mask=jnp.asarray(mask),
                              q_offset=jnp.asarray(off), scale=0.3)
            want = ref_attention(q, k, v, causal=causal, mask=mask, q_offset=off, scale=0.3)
            assert_close(got, want, atol=1e-12)

        def f(q, k, v):
            return A.attention(q, k, v, causal=True, mask=jnp.asarray(mask), q_offset=5)

        check_grads(jax.jit(f), tuple(map(jnp.asarray, (q, k, v))), order=1, modes=["rev"],
                    eps=1e-6)
    got = A.attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), causal=False,
                      mask=jnp.asarray(mask))
    assert_close(got, ref_attention(q, k, v, causal=False, mask=mask), atol=2e-5)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="multiple"):
        A.attention(jnp.zeros((1, 2, 3, 4)), jnp.zeros((1, 2, 2, 4)), jnp.zeros((1, 2, 2, 4)))


def test_rope_rotates_pairs_and_is_relative():
    x, pos = rand(2, 5, 3, 8), np.array([0, 3, 4, 9, 10])
    half, theta = 4, 10000.0 ** (-np.arange(4) * 2 / 8)
    ang = pos[:, None] * theta
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    want = np.concatenate([x[..., :half] * c - x[..., half:] * s,
                           x[..., half:] * c + x[..., :half] * s], -1)
    got = A.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(pos))
    assert_close(got, want, atol=1e-5)
    # <R_m q, R_n k> depends on m - n only
    q, k = jnp.asarray(rand(1, 1, 1, 8), jnp.float32), jnp.asarray(rand(1, 1, 1, 8), jnp.float32)

    def dot(m, n):
        return float(jnp.sum(A.apply_rope(q, jnp.array([m])) * A.apply_rope(k, jnp.array([n]))))

    assert abs(dot(7, 3) - dot(14, 10)) < 1e-4 and abs(dot(7, 3) - dot(3, 7)) > 1e-3


@pytest.mark.parametrize("causal,topk", [(True, 3), (False, 4), (True, 50)])
def test_topk_attention(causal, topk):
    q, k, v = rand(2, 9, 4, 6), rand(2, 9, 2, 6), rand(2, 9, 2, 3)
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (q, k, v)))
        got = A.topk_attention(*args, topk=topk, causal=causal)
        want = ref_attention(q, k, v, causal=causal, keep=topk_keep(topk))
        assert_close(got, want, atol=1e-12)
        if topk >= 9:
            assert_close(got, A.attention(*args, causal=causal), atol=1e-12)
        else:  # a wrong selection would change the output
            assert np.abs(want - ref_attention(q, k, v, causal=causal)).max() > 1e-2
        if topk == 3:
            check_grads(jax.jit(lambda *a: A.topk_attention(*a, topk=topk, causal=causal)),
                        args, order=1, modes=["rev"], eps=1e-6)


def topk_exact(topk):
    """Keep exactly topk keys per row (first by index among ties): the rule topk_attention
    does NOT follow, used to show that the tie test can tell the two apart."""

    def keep(logit, vis):
        order = np.argsort(-np.where(vis, logit, -np.inf), axis=-1, kind="stable")
        out = np.zeros_like(vis)
        np.put_along_axis(out, order[:, :topk], True, axis=-1)
        return out & vis

    return keep


@pytest.mark.parametrize("causal,off,traced", [(True, 0, False), (True, 4, False),
                                               (True, 4, True), (False, 0, False)])
def test_topk_attention_blocks_mask_offset_ties(monkeypatch, causal, off, traced):
    """Several query blocks (padded, in causal key-length groups), a padding mask, a query
    offset, GQA and exact score ties (integer q, k): equal to the float64 reference."""
    monkeypatch.setattr(A, "_TOPK_BLOCK", 2)
    monkeypatch.setattr(A, "_TOPK_GROUPS", 2)
    t = 9 - off
    q, k = (RNG.integers(-2, 3, shape).astype(float) for shape in ((2, t, 4, 6), (2, 9, 2, 6)))
    v, mask = rand(2, 9, 2, 3), RNG.random((2, 9)) > 0.3
    mask[:, 0] = True
    tie_effect = 0.0
    for topk in (3, 6):  # with off = 0, topk = 6 takes the dense branch in the first group
        with jax.enable_x64(True):
            got = A.topk_attention(*map(jnp.asarray, (q, k, v)), topk=topk, causal=causal,
                                   mask=jnp.asarray(mask), scale=1.0,
                                   q_offset=jnp.asarray(off) if traced else off)
        kw = dict(causal=causal, mask=mask, q_offset=off, scale=1.0)  # integer scores tie exactly
        want = ref_attention(q, k, v, keep=topk_keep(topk), **kw)
        assert_close(got, want, atol=1e-12)
        tie_effect = max(tie_effect, np.abs(want - ref_attention(q, k, v, keep=topk_exact(topk),
                                                                 **kw)).max())
    # ties at the k-th score are kept: keeping exactly topk keys would give another output
    assert tie_effect > 1e-3


def test_topk_attention_blocks_grads_and_empty_rows(monkeypatch):
    monkeypatch.setattr(A, "_TOPK_BLOCK", 3)
    monkeypatch.setattr(A, "_TOPK_GROUPS", 2)
    q, k, v = rand(2, 8, 2, 5), rand(2, 8, 1, 5), rand(2, 8, 1, 4)
    mask = np.ones((2, 8), bool)
    mask[1, :2] = False  # queries 0 and 1 of sequence 1 see no key: their output is 0
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (q, k, v)))

        def f(*a):
            return A.topk_attention(*a, topk=2, causal=True, mask=jnp.asarray(mask), scale=0.7)

        got = f(*args)
        np.testing.assert_array_equal(got[1, :2], 0.0)
        with np.errstate(invalid="ignore"):  # the reference's empty rows are 0 / 0
            want = ref_attention(q, k, v, causal=True, mask=mask, scale=0.7, keep=topk_keep(2))
        assert_close(got[0], want[0], atol=1e-12)
        assert_close(got[1, 2:], want[1, 2:], atol=1e-12)
        check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=1e-6)


def test_topk_attention_float32_uses_topk_kernel():
    """float32 matches the reference, and on CPU the selection compiles to XLA's TopK kernel,
    not a full sort of every score row (which made topk_attention ~10x slower at T = 1024)."""
    q, k, v = rand(1, 40, 2, 8), rand(1, 40, 2, 8), rand(1, 40, 2, 8)
    f = jax.jit(lambda *a: A.topk_attention(*a, topk=5, causal=True))
    args = tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v))
    got = f(*args)
    assert_close(got, ref_attention(q, k, v, causal=True, keep=topk_keep(5)),
                               atol=2e-5)
    if jax.default_backend() == "cpu":
        hlo = f.lower(*args).compile().as_text()
        assert "TopK" in hlo and "sort(" not in hlo


def ref_dsa(q, k, v, qi, ki, wi, topk):
    """DeepSeek-V3.2 eq. 1-2 in float64: relu indexer, causal top-k shared by heads."""
    b, t, hq, d = q.shape
    o = np.zeros((b, t, hq, v.shape[-1]))
    sel = []
    for bi in range(b):
        score = np.einsum("tjd,sd->tjs", qi[bi], ki[bi]) * qi.shape[-1] ** -0.5
        score = np.einsum("tjs,tj->ts", np.maximum(score, 0), wi[bi])
        score = np.where(np.tri(t, dtype=bool), score, -np.inf)
        keep = np.zeros((t, t), bool)
        for ti in range(t):
            order = np.argsort(-score[ti], kind="stable")[: min(topk, ti + 1)]
            keep[ti, order] = True
        sel.append(keep)
        o[bi] = ref_attention(q[bi : bi + 1], k[bi : bi + 1], v[bi : bi + 1], causal=True,
                              keep=lambda logit, vis, keep=keep: keep)[0]
    return o, np.stack(sel)


def dsa_inputs(b=2, t=13, hq=4, h=2, d=8, dv=6, hi=3, di=4):
    # index inputs with positive entries: relu scores > 0, no ties in the selection
    return (rand(b, t, hq, d), rand(b, t, h, d), rand(b, t, h, dv),
            np.abs(rand(b, t, hi, di)), np.abs(rand(b, t, di)), np.abs(rand(b, t, hi)) + 0.1)


@pytest.mark.parametrize("topk,block", [(4, 5), (6, 3), (20, 4)])
def test_dsa_matches_reference(topk, block):
    arrays = dsa_inputs(t=11)
    want, keep = ref_dsa(*arrays, topk)
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, arrays))
        got, idx = DSA(*args, topk=topk, block_size=block, return_indices=True)
        assert_close(got, want, atol=1e-12)
        sel = np.zeros(keep.shape[:2] + (keep.shape[2] + 1,), bool)
        np.put_along_axis(sel, np.where(idx < 0, keep.shape[2], idx), True, axis=-1)
        np.testing.assert_array_equal(sel[..., :-1], keep)
        if topk >= 11:
            assert_close(got, A.attention(*args[:3]), atol=1e-12)

        def f(q, k, v):
            return A.dsa(q, k, v, *args[3:], topk=topk, block_size=block)

        if block == 5:  # one gradient check (slow: one compile per block)
            check_grads(jax.jit(f), args[:3], order=1, modes=["rev"], eps=1e-6)


def test_dsa_shared_kv_values_and_gradients():
    """The shared-KV fast path (one KV head, MLA in MQA mode: matmuls over the gathered rows)."""
    arrays = dsa_inputs(t=10, hq=4, h=1)
    want, _ = ref_dsa(*arrays, 3)
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, arrays))
        assert_close(DSA(*args, topk=3, block_size=4), want, atol=1e-12)

        def f(q, k, v):
            return A.dsa(q, k, v, *args[3:], topk=3, block_size=4)

        check_grads(jax.jit(f), args[:3], order=1, modes=["rev"], eps=1e-6)


def ref_dsa_blocks(q, k, v, qi, ki, wi, topk, block):
    """dsa(select="block") in float64: dense causal while t < t_dense; then each query block
    sees its own keys causally plus the topk earlier keys of highest max-over-block score."""
    b, t, _, _ = q.shape
    t_dense = min(t, max(block, (topk // block + 1) * block))
    keep = np.tri(t, dtype=bool)[None].repeat(b, 0)
    for bi in range(b):
        score = np.einsum("tjd,sd->tjs", qi[bi], ki[bi]) * qi.shape[-1] ** -0.5
        score = np.einsum("tjs,tj->ts", np.maximum(score, 0), wi[bi])
        for t0 in range(t_dense, t, block):
            t1 = min(t0 + block, t)
            best = np.argsort(-score[t0:t1, :t0].max(0), kind="stable")[:topk]
            keep[bi, t0:t1, :t0] = False
            keep[bi, t0:t1, best] = True
    o = np.stack([ref_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], causal=True,
                                keep=lambda logit, vis, kp=keep[i]: kp)[0] for i in range(b)])
    return o


def test_dsa_block_selection_matches_reference():
    arrays = dsa_inputs(t=17, hq=4, h=2)
    want = ref_dsa_blocks(*arrays, topk=3, block=4)
    with jax.enable_x64(True):
        f = jax.jit(functools.partial(A.dsa, topk=3, select="block", select_block=4))
        assert_close(f(*map(jnp.asarray, arrays)), want, atol=1e-12)
    with pytest.raises(ValueError, match="select"):
        A.dsa(*map(jnp.asarray, arrays), topk=3, select="rows")


def test_dsa_padding_mask():
    arrays = dsa_inputs(b=2, t=9)
    mask = np.ones((2, 9), bool)
    mask[1, 6:] = False
    with jax.enable_x64(True):
        full = DSA(*map(jnp.asarray, arrays), topk=3, block_size=4, mask=jnp.asarray(mask))
        short = DSA(*(jnp.asarray(a[1:2, :6]) for a in arrays), topk=3, block_size=4)
        assert_close(full[1, :6], short[0], atol=1e-12)


def _fla_naive():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not importable: fla's naive_dsa cannot run")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops" / "dsa" / "naive.py"
    if not path.exists():
        pytest.skip(f"{path} not found in this fla-core version")
    mod_spec = importlib.util.spec_from_file_location("fla_dsa_naive", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_dsa_matches_fla_naive_dsa():
    naive = _fla_naive()
    import torch

    arrays = dsa_inputs(b=2, t=21, hq=4, h=2, d=8, dv=8)
    o_ref, idx_ref = naive.naive_dsa(*(torch.tensor(a) for a in arrays), topk=5,
                                     return_indices=True)
    with jax.enable_x64(True):
        o, idx = DSA(*map(jnp.asarray, arrays), topk=5, block_size=6, return_indices=True)
        assert_close(o, o_ref.numpy(), atol=2e-6)  # fla computes in float32
        np.testing.assert_array_equal(np.sort(np.asarray(idx), -1), np.sort(idx_ref.numpy(), -1))
        # given indices (the indexer skipped), sparse attention alone
        o2 = A.sparse_attention(*map(jnp.asarray, arrays[:3]), jnp.asarray(idx_ref.numpy()))
        assert_close(o2, o_ref.numpy(), atol=2e-6)


def test_indexer_loss_reference_and_gradient_flow():
    q, k, _, qi, ki, wi = dsa_inputs(b=1, t=6)
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (q, k, qi, ki, wi)))
        loss = jax.jit(A.dsa_indexer_loss, static_argnames="topk")
        got = loss(*args)
        # reference: p = heads-summed attention probabilities, L1-normalised; KL(p || softmax(I))
        p = np.zeros((6, 6))
        for h in range(4):
            keep = np.tri(6, dtype=bool)
            lg = np.where(keep, q[0, :, h] @ k[0, :, h // 2].T / np.sqrt(8), -np.inf)
            e = np.exp(lg - lg.max(-1, keepdims=True))
            p += e / e.sum(-1, keepdims=True)
        p /= p.sum(-1, keepdims=True)
        sim = np.maximum(np.einsum("tjd,sd->tjs", qi[0], ki[0]) / 2, 0)
        score = np.einsum("tjs,tj->ts", sim, wi[0])
        score = np.where(np.tri(6, dtype=bool), score, -np.inf)
        logq = score - score.max(-1, keepdims=True)
        logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
        kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.where(p > 0, logq, 0)), 0)
        assert_close(got, kl.sum(-1).mean(), rtol=1e-10)
        gq, gk = jax.jit(jax.grad(lambda q, k: loss(q, k, *args[2:]), (0, 1)))(*args[:2])
        assert float(jnp.abs(gq).max()) == 0 and float(jnp.abs(gk).max()) == 0
        g_idx = jax.jit(jax.grad(lambda a: loss(*args[:2], a, *args[3:], topk=3)))(args[2])
        assert float(jnp.abs(g_idx).max()) > 0
