"""DeepSeek-V3.2's indexer KL (eq. 3 dense warm-up, eq. 4 sparse stage) against a numpy loop.

Reference, per real query t (mask True), over the keys it may see (s <= t, mask[s] True):
  I_{t,s} = sum_j w_{t,j} relu(index_scale q^I_{t,j} . k^I_s)                       (eq. 1)
  S_t = the topk keys of largest I_{t,s} (eq. 4), or every visible key (eq. 3)
  p_t(s) = sum_h softmax_{s in S_t}(scale q_{t,h} . k_{s,h}), L1-normalised over S_t
  KL_t = sum_{s in S_t} p_t(s) (log p_t(s) - log softmax_{s in S_t}(I_{t,s}))
and the loss is the mean of KL_t over real queries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers.sparse import DSA
from seqlab.ops.attention import dsa_indexer, dsa_indexer_loss


def indexer_kl_ref(q, k, q_idx, k_idx, w_idx, mask, topk, scale, index_scale):
    """q [B,T,Hq,D], k [B,T,H,D], q_idx [B,T,Hi,Di], k_idx [B,T,Di], w_idx [B,T,Hi],
    mask [B,T] bool; topk None = dense (eq. 3). float64 scalar."""
    q, k, q_idx, k_idx, w_idx = (np.asarray(a, np.float64) for a in (q, k, q_idx, k_idx, w_idx))
    b_, t_, hq = q.shape[:3]
    group = hq // k.shape[2]
    total, n_real = 0.0, 0
    for b in range(b_):
        for t in range(t_):
            if not mask[b, t]:
                continue
            vis = [s for s in range(t + 1) if mask[b, s]]
            score = {s: sum(w_idx[b, t, j] * max(index_scale * q_idx[b, t, j] @ k_idx[b, s], 0.0)
                            for j in range(q_idx.shape[2])) for s in vis}
            sel = vis if topk is None else sorted(vis, key=lambda s: -score[s])[:topk]
            p = np.zeros(len(sel))
            for h in range(hq):
                logits = np.array([scale * q[b, t, h] @ k[b, s, h // group] for s in sel])
                e = np.exp(logits - logits.max())
                p += e / e.sum()
            p /= p.sum()
            i = np.array([score[s] for s in sel])
            log_pred = i - i.max() - np.log(np.sum(np.exp(i - i.max())))
            total += float(np.sum(p * (np.log(p) - log_pred)))
            n_real += 1
    return total / n_real


def _inputs(seed, b=2, t=9, hq=4, h=2, d=8, hi=3, di=6):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((b, t, hq, d)), rng.standard_normal((b, t, h, d))
    q_idx, k_idx = rng.standard_normal((b, t, hi, di)), rng.standard_normal((b, t, di))
    w_idx = rng.standard_normal((b, t, hi))
    mask = np.ones((b, t), bool)
    mask[1, 6:] = False
    return q, k, q_idx, k_idx, w_idx, mask


@pytest.mark.parametrize("topk", [None, 3, 5])
def test_indexer_loss_op_matches_numpy(topk):
    q, k, q_idx, k_idx, w_idx, mask = _inputs(0)
    f = jax.jit(lambda *a: dsa_indexer_loss(*a[:5], topk=topk, scale=0.3, index_scale=0.5,
                                            mask=a[5]))
    got = f(*(jnp.asarray(a, jnp.float32) for a in (q, k, q_idx, k_idx, w_idx)),
            jnp.asarray(mask))
    want = indexer_kl_ref(q, k, q_idx, k_idx, w_idx, mask, topk, 0.3, 0.5)
    assert_close(got, want, rtol=2e-5, atol=1e-6)
    if topk is not None:  # eq. 4 and eq. 3 differ on these inputs
        dense = indexer_kl_ref(q, k, q_idx, k_idx, w_idx, mask, None, 0.3, 0.5)
        assert abs(dense - want) > 1e-2 * abs(want)


@pytest.mark.parametrize("warmup", [0, 5])
def test_dsa_layer_sows_the_stage_kl(warmup):
    """Training-mode call: sparse stage after warm-up (eq. 4), dense during it (eq. 3); the sown
    value is ``indexer_loss_weight * KL`` of the layer's own q, k and indexer inputs."""
    layer = DSA(16, topk=3, index_heads=2, index_head_dim=4, block_size=4, n_heads=2,
                indexer_warmup_steps=warmup, indexer_loss_weight=0.5, rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (2, 8, 16))
    mask = jnp.array([[True] * 8, [True] * 6 + [False] * 2])

    @jax.jit
    def call(layer):
        layer.train()
        _, sown = nnx.capture(layer, nnx.Intermediate)(x, mask)
        pos = jnp.arange(8)
        xm = jnp.where(mask[..., None], x, 0.0)
        return sown["aux_loss"].get_value()[0], layer.attn.qkv(xm, pos)[:2], \
            layer.indexer_inputs(xm, pos)

    aux, (q, k), (q_idx, k_idx, w_idx) = call(layer)
    want = indexer_kl_ref(q, k, q_idx, k_idx, w_idx, np.asarray(mask),
                          None if warmup else 3, layer.attn.scale, 4**-0.5)
    assert_close(aux, 0.5 * want, rtol=2e-5, atol=1e-6)


def _masked_dense_kl(q, k, q_idx, k_idx, w_idx, indices, scale, index_scale):
    """Eq. 4 as [B, T, T] arrays restricted by a selection mask (the slow form the gathered
    one replaces), for gradients."""
    b, t, hq, _ = q.shape
    g = hq // k.shape[2]
    sel = jnp.zeros((b, t, t + 1), bool)
    put = jax.vmap(jax.vmap(lambda r, i: r.at[i].set(True)))
    sel = put(sel, jnp.where(indices < 0, t, indices))
    sel = sel[..., :t]
    logits = jnp.einsum("bthd,bshd->bhts", q, jnp.repeat(k, g, axis=2)) * scale
    logits = jnp.where(sel[:, None], logits, -jnp.inf)
    p = jnp.nan_to_num(jax.nn.softmax(logits, -1)).sum(1)
    p = jax.lax.stop_gradient(p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30))
    sim = jax.nn.relu(jnp.einsum("btjd,bsd->btjs", q_idx, k_idx) * index_scale)
    score = jnp.einsum("btjs,btj->bts", sim, w_idx)
    logq = jax.nn.log_softmax(jnp.where(sel, score, -1e30), -1)
    kl = jnp.where(sel & (p > 0), p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0).sum(-1)
    return kl.mean()


def test_gathered_sparse_kl_gradients_equal_the_masked_dense_form():
    """Values and gradients (q_idx, k_idx, w_idx) of the gathered eq. 4 against the [T, T]
    masked form, over more queries than one lax.map block (2 x 40 rows, blocks of 64)."""
    q, k, q_idx, k_idx, w_idx, _ = (jnp.asarray(a, jnp.float32)
                                    for a in _inputs(4, b=2, t=40))
    idx = dsa_indexer(q_idx, k_idx, w_idx, topk=7, scale=0.5)
    f_new = jax.jit(jax.value_and_grad(
        lambda a, b_, c: dsa_indexer_loss(q, k, a, b_, c, indices=idx, scale=0.3,
                                          index_scale=0.5), argnums=(0, 1, 2)))
    f_old = jax.jit(jax.value_and_grad(
        lambda a, b_, c: _masked_dense_kl(q, k, a, b_, c, idx, 0.3, 0.5), argnums=(0, 1, 2)))
    (v_new, g_new), (v_old, g_old) = f_new(q_idx, k_idx, w_idx), f_old(q_idx, k_idx, w_idx)
    assert_close(v_new, v_old, rtol=1e-5, atol=1e-7)
    for a, b_ in zip(g_new, g_old, strict=True):
        assert float(jnp.abs(b_).max()) > 0
        assert_close(a, b_, rtol=1e-4, atol=1e-6)
    via_topk = dsa_indexer_loss(q, k, q_idx, k_idx, w_idx, topk=7, scale=0.3, index_scale=0.5)
    assert_close(via_topk, v_new, rtol=1e-6, atol=1e-8)
