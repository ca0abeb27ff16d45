"""seqlab.ops.ssd against references written here from the papers' equations.

SSD: the recurrence of Mamba-2 eq. (1), h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,
y_t = h_t C_t, run step by step in float64. Hydra: the quasiseparable matrix built entry by
entry from its definition (lower / diagonal / upper parts), then y = M x.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close

from seqlab.ops import ssd as ssd_module
from seqlab.ops.reference.ssd import ssd_sequential
from seqlab.ops.ssd import materialize, quasiseparable, segsum, ssd

# Compiled once per shape (eager op-by-op dispatch would dominate these tiny tests), without
# XLA's expensive optimisation passes: these tests check values, not speed.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ssd_jit = jax.jit(ssd, static_argnames="chunk_size", compiler_options=FAST)
quasiseparable_jit = jax.jit(quasiseparable, static_argnames="chunk_size", compiler_options=FAST)
materialize_jit = jax.jit(materialize, compiler_options=FAST)


def _inputs(seed, b, length, h, p, g, n, dt_max=0.6):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((b, length, h, p)),
        dt=rng.uniform(0.02, dt_max, (b, length, h)),
        A=-rng.uniform(0.3, 2.0, (h,)),
        B=rng.standard_normal((b, length, g, n)),
        C=rng.standard_normal((b, length, g, n)),
    )


ssd_sequential_jit = jax.jit(ssd_sequential, compiler_options=FAST)


@pytest.mark.parametrize(
    "length,chunk,groups,cache",
    [(13, 4, 1, None), (13, 5, 2, None), (7, 16, 4, None), (1, 3, 2, None), (23, 4, 1, 100),
     (23, 4, 2, 300), (19, 4, 1, 300)],
)
def test_ssd_matches_sequential(length, chunk, groups, cache, monkeypatch):
    """``cache``: a group budget small enough that the forward walks the 6 chunks in groups of
    1 (one chunk: 2 sequences x 4 heads x 4 x 4 steps = 128 > 100) or of 2 (2 groups of B/C:
    4 x 2 heads x 4 x 4 = 128 per chunk, 2 chunks <= 300); the last case has 5 chunks, padded to
    3 groups of 2."""
    run = ssd_jit
    if cache is not None:  # a fresh jit: the budget is read when tracing
        monkeypatch.setattr(ssd_module, "_CACHE_ELEMENTS", cache)
        run = jax.jit(ssd, static_argnames="chunk_size")
    with jax.enable_x64(True):
        a = {k: jnp.asarray(v) for k, v in _inputs(0, 2, length, 4, 3, groups, 5).items()}
        h0 = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 3, 5)))
        y, final = run(**a, chunk_size=chunk, initial_state=h0)
        y_ref, final_ref = ssd_sequential_jit(**a, initial_state=h0)
        assert y.dtype == jnp.float64
        assert_close(y, y_ref, rtol=1e-10, atol=1e-11)
        assert_close(final, final_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("cache", [None, 100, "other platforms"])
def test_ssd_gradients_match_sequential(cache, monkeypatch):
    """``cache=100``: forward and backward walk the 3 chunks in groups of one (2 x 2 sequences x
    2 heads x 4 x 4 steps = 128 elements per chunk > 100). ``"other platforms"``: the form a
    GPU or TPU gets (every step batched over all chunks around one lax.scan), forced here."""
    if cache == "other platforms":
        monkeypatch.setattr(ssd_module, "on_cpu", lambda cpu_fn, other_fn, *a: other_fn(*a))
    elif cache is not None:
        monkeypatch.setattr(ssd_module, "_CACHE_ELEMENTS", cache)
    with jax.enable_x64(True):
        a = {k: jnp.asarray(v) for k, v in _inputs(2, 2, 11, 4, 3, 2, 5).items()}
        h0 = jnp.asarray(np.random.default_rng(3).standard_normal((2, 4, 3, 5)))
        rng = np.random.default_rng(4)
        wy, ws = rng.standard_normal((2, 11, 4, 3)), rng.standard_normal((2, 4, 3, 5))

        def loss(fn):
            def f(x, dt, A, B, C, h0):
                y, s = fn(x, dt, A, B, C, h0)
                return jnp.sum(wy * y) + jnp.sum(ws * s)
            return f

        def chunked(x, dt, A, B, C, h0):
            return ssd(x, dt, A, B, C, chunk_size=4, initial_state=h0)

        args = (a["x"], a["dt"], a["A"], a["B"], a["C"], h0)
        g = jax.jit(jax.grad(loss(chunked), argnums=range(6)), compiler_options=FAST)(*args)
        g_ref = jax.jit(jax.grad(loss(ssd_sequential), argnums=range(6)),
                        compiler_options=FAST)(*args)
        for name, gi, ri in zip("x dt A B C h0".split(), g, g_ref, strict=True):
            assert_close(gi, ri, rtol=1e-9, atol=1e-10, err_msg=name)
        # and the chunked op's gradient against a central finite difference along a direction
        f = jax.jit(loss(chunked), compiler_options=FAST)
        v = [jnp.asarray(rng.standard_normal(t.shape)) for t in args]
        eps = 1e-6
        fd = (f(*(t + eps * d for t, d in zip(args, v, strict=True)))
              - f(*(t - eps * d for t, d in zip(args, v, strict=True)))) / (2 * eps)
        directional = sum(jnp.sum(gi * d) for gi, d in zip(g, v, strict=True))
        assert_close(directional, fd, rtol=1e-7)


def test_ssd_float32_is_stable_over_long_strongly_decaying_chunks():
    """One 384-step chunk whose first half decays by e^-20 per step: the prefix sums reach
    -3840, where float32 resolves only ~2e-4, so exp(cs_i - cs_j) would be off by ~2e-4 in the
    weakly decaying second half. The masked segment sum keeps float32 accurate."""
    length = 384
    a = _inputs(5, 1, length, 2, 4, 1, 8, dt_max=0.05)
    a["dt"][:, : length // 2] = 10.0
    a["A"][:] = -2.0
    with jax.enable_x64(True):
        y_ref, _ = ssd_sequential_jit(**{k: jnp.asarray(v) for k, v in a.items()},
                                  initial_state=jnp.zeros((1, 2, 4, 8)))
        y_ref = np.asarray(y_ref)
    y, _ = ssd_jit(**{k: jnp.asarray(v, jnp.float32) for k, v in a.items()}, chunk_size=length)
    assert y.dtype == jnp.float32
    # measured: masked segsum ~1.5e-5 max error (|y| <= 190), prefix-sum difference ~9e-3
    assert_close(y, y_ref, rtol=1e-5, atol=1e-6 * np.abs(y_ref).max())


def test_segsum_definition():
    a = jnp.asarray(np.random.default_rng(6).standard_normal(6))
    s = np.asarray(segsum(a))
    for i in range(6):
        for j in range(6):
            if i < j:  # above the diagonal: exp(segsum) = 0
                assert s[i, j] == -np.inf
            else:
                assert_close(s[i, j], float(np.sum(np.asarray(a)[j + 1 : i + 1])), rtol=1e-6,
                             atol=1e-6)


def test_ssd_dt_zero_positions_neither_decay_nor_feed():
    """Inserting steps with dt = 0 (and arbitrary x, B, C) changes no other output nor the
    final state: this is what makes padding exact."""
    with jax.enable_x64(True):
        a = {k: jnp.asarray(v) for k, v in _inputs(7, 2, 9, 2, 3, 1, 4).items()}
        y, final = ssd_jit(**a, chunk_size=4)
        keep = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8])
        where = np.array([0, 1, 3, 4, 5, 7, 8, 9, 10])  # real steps inside a length-13 sequence
        junk = _inputs(8, 2, 13, 2, 3, 1, 4)
        big = {k: np.array(v) for k, v in junk.items() if k != "A"}
        for k in big:
            big[k][:, where] = np.asarray(a[k])[:, keep]
        big["dt"][:, np.setdiff1d(np.arange(13), where)] = 0.0
        y_big, final_big = ssd_jit(**{k: jnp.asarray(v) for k, v in big.items()}, A=a["A"],
                               chunk_size=4)
        assert_close(y_big[:, where], y, rtol=1e-12, atol=1e-12)
        assert_close(final_big, final, rtol=1e-12, atol=1e-12)


def test_ssd_rejects_bad_arguments():
    a = {k: jnp.asarray(v, jnp.float32) for k, v in _inputs(0, 1, 5, 4, 2, 3, 2).items()}
    with pytest.raises(ValueError, match="groups"):
        ssd(**a)
    a = {k: jnp.asarray(v, jnp.float32) for k, v in _inputs(0, 1, 5, 4, 2, 2, 2).items()}
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(**a, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        ssd(**a, initial_state=jnp.zeros((1, 4, 2, 3)))
    with pytest.raises(ValueError, match="dt"):
        ssd(a["x"], a["dt"][:, :-1], a["A"], a["B"], a["C"])


# ----------------------------------------------------------------------------- quasiseparable


def quasiseparable_matrix(dt_fw, dt_bw, A, B_fw, C_fw, B_bw, C_bw, diag):
    """Hydra's quasiseparable matrix, entry by entry: [b, h, L, L] (float64 numpy).

    m[i, j] = C_fw[i-1] . B_fw[j] dt_fw[j] prod_{j<k<i} exp(dt_fw[k] A)   (i > j)
    m[i, i] = diag[i]
    m[i, j] = C_bw[i+1] . B_bw[j] dt_bw[j] prod_{i<k<j} exp(dt_bw[k] A)   (i < j)
    (shift(SS(x)) reads the forward state one step late; the backward one, one step early.)
    """
    b, length, h = dt_fw.shape
    reps = h // B_fw.shape[2]
    Bf, Cf, Bb, Cb = (np.repeat(t, reps, axis=2) for t in (B_fw, C_fw, B_bw, C_bw))
    M = np.zeros((b, h, length, length))
    for i in range(length):
        for j in range(length):
            if i > j:
                decay = np.prod(np.exp(dt_fw[:, j + 1 : i] * A), axis=1)
                M[:, :, i, j] = np.sum(Cf[:, i - 1] * Bf[:, j], -1) * dt_fw[:, j] * decay
            elif i == j:
                M[:, :, i, j] = diag[:, i]
            else:
                decay = np.prod(np.exp(dt_bw[:, i + 1 : j] * A), axis=1)
                M[:, :, i, j] = np.sum(Cb[:, i + 1] * Bb[:, j], -1) * dt_bw[:, j] * decay
    return M


def _qs_inputs(seed, b, length, h, p, g, n):
    rng = np.random.default_rng(seed)
    fw = _inputs(seed, b, length, h, p, g, n)
    return dict(
        x=fw["x"], dt_fw=fw["dt"], dt_bw=rng.uniform(0.02, 0.6, (b, length, h)), A=fw["A"],
        B_fw=fw["B"], C_fw=fw["C"], B_bw=rng.standard_normal((b, length, g, n)),
        C_bw=rng.standard_normal((b, length, g, n)), diag=rng.standard_normal((b, length, h)),
    )


@pytest.mark.parametrize("length,chunk,groups", [(9, 4, 1), (10, 3, 2)])
def test_quasiseparable_equals_explicit_matrix(length, chunk, groups):
    q = _qs_inputs(10 + length, 2, length, 4, 3, groups, 5)
    M = quasiseparable_matrix(*(q[k] for k in
                                ("dt_fw", "dt_bw", "A", "B_fw", "C_fw", "B_bw", "C_bw", "diag")))
    y_ref = np.einsum("bhij,bjhp->bihp", M, q["x"])
    with jax.enable_x64(True):
        qj = {k: jnp.asarray(v) for k, v in q.items()}
        y = quasiseparable_jit(**qj, chunk_size=chunk)
        assert_close(y, y_ref, rtol=1e-10, atol=1e-11)
        M_view = materialize_jit(qj["dt_fw"], qj["A"], qj["B_fw"], qj["C_fw"], dt_bw=qj["dt_bw"],
                             B_bw=qj["B_bw"], C_bw=qj["C_bw"], diag=qj["diag"])
        assert_close(M_view, M, rtol=1e-10, atol=1e-12)


def test_materialize_causal_is_mamba2_eq3():
    """M[i, j] = C_i . B_j dt_j exp(A sum_{j<k<=i} dt_k) for i >= j, 0 above (float64)."""
    a = _inputs(30, 2, 6, 2, 3, 1, 4)
    M = materialize_jit(*(jnp.asarray(a[k], jnp.float32) for k in ("dt", "A", "B", "C")))
    for i in range(6):
        for j in range(6):
            want = np.zeros((2, 2))
            if i >= j:
                want = (np.sum(a["C"][:, i] * a["B"][:, j], -1) * a["dt"][:, j]
                        * np.exp(a["A"] * a["dt"][:, j + 1 : i + 1].sum(1)))
            assert_close(M[:, :, i, j], want, rtol=1e-5, atol=1e-6)


def test_quasiseparable_gradients_match_matrix_form():
    """Gradients of the chunked two-direction op == gradients of y = M x with M built by
    index masks straight from the definition (float64)."""
    q = _qs_inputs(20, 2, 7, 2, 3, 1, 4)
    length = 7
    i, j, k = np.meshgrid(*(np.arange(length),) * 3, indexing="ij")
    between_fw = ((j < k) & (k < i)).astype(np.float64)  # [i, j, k]: k strictly between
    between_bw = ((i < k) & (k < j)).astype(np.float64)
    below, above = np.tril(np.ones((length, length)), -1), np.triu(np.ones((length, length)), 1)
    prev, nxt = np.eye(length, k=-1), np.eye(length, k=1)  # row i picks i-1 / i+1

    def dense(x, dt_fw, dt_bw, A, B_fw, C_fw, B_bw, C_bw, diag):
        Cp = jnp.einsum("ik,bkgn->bign", prev, C_fw)  # C_fw[i-1]
        Cn = jnp.einsum("ik,bkgn->bign", nxt, C_bw)  # C_bw[i+1]
        lo = jnp.einsum("bign,bjgn->bgij", Cp, B_fw) * jnp.exp(
            A[None, :, None, None] * jnp.einsum("ijk,bkh->bhij", between_fw, dt_fw))
        up = jnp.einsum("bign,bjgn->bgij", Cn, B_bw) * jnp.exp(
            A[None, :, None, None] * jnp.einsum("ijk,bkh->bhij", between_bw, dt_bw))
        M = (below * lo * jnp.moveaxis(dt_fw, 1, 2)[:, :, None, :]
             + above * up * jnp.moveaxis(dt_bw, 1, 2)[:, :, None, :]
             + jnp.eye(length) * jnp.moveaxis(diag, 1, 2)[..., None])
        return jnp.einsum("bhij,bjhp->bihp", M, x)

    w = np.random.default_rng(21).standard_normal((2, length, 2, 3))
    names = list(q)
    with jax.enable_x64(True):
        args = [jnp.asarray(q[k]) for k in names]
        assert_close(quasiseparable_jit(*args, chunk_size=3),
                                   jax.jit(dense, compiler_options=FAST)(*args),
                                   rtol=1e-10, atol=1e-11)
        g = jax.jit(jax.grad(lambda *a: jnp.sum(w * quasiseparable(*a, chunk_size=3)),
                             argnums=range(9)), compiler_options=FAST)(*args)
        g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(w * dense(*a)), argnums=range(9)),
                        compiler_options=FAST)(*args)
        for name, gi, ri in zip(names, g, g_ref, strict=True):
            assert_close(gi, ri, rtol=1e-9, atol=1e-10, err_msg=name)


def test_materialize_needs_all_backward_arguments():
    q = {k: jnp.asarray(v, jnp.float32) for k, v in _qs_inputs(0, 1, 4, 2, 2, 1, 2).items()}
    with pytest.raises(ValueError, match="dt_bw"):
        materialize(q["dt_fw"], q["A"], q["B_fw"], q["C_fw"], dt_bw=q["dt_bw"])
