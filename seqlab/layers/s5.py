"""S5: a MIMO diagonal state-space layer computed with a parallel scan (Smith et al. 2023,
'Simplified State Space Layers for Sequence Modeling'), and S5-PTD (Yu et al. 2023).

One state of P complex modes shared by all H channels:
``x_k = dLambda x_{k-1} + dB u_k``, ``y_k = c Re(C~ x_k) + D u_k`` with
``dLambda = exp(Lambda dt)``, ``dB = (dLambda - 1) / Lambda * B~`` (ZOH, S5 eq. (6)), the states
computed by ``ops.scan.linear_scan``. Initialised as lindermanlab/S5 (``s5/ssm.py``,
``s5/ssm_init.py``): ``Lambda, V`` of block-diagonal HiPPO-N (J blocks, S5 Sec. 4.2; P/2 modes
kept by conjugate symmetry, c = 2) or, with ``init="ptd"``, of block-diagonal S4-PTD (all P
modes, c = 1, as AnnanYu/Approximate_Diagonal's S5-PTD with ``conj_sym=False``);
``B~ = V^-1 B`` with B LeCun normal [P, H] (std 1/sqrt(P)); ``C~ = C V`` with C complex.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.layers.common import (
    ACTIVATIONS,
    OUTPUTS,
    REAL_PARAMS,
    SSMOutputStage,
    SSMParam,
    apply_mask,
    as_complex,
    check_input,
    check_length,
    choice,
    complex_param,
    init_log_dt,
    real_part,
    reject_renamed,
)
from seqlab.layers.protocol import register_mixer
from seqlab.ops import hippo
from seqlab.ops.scan import linear_scan
from seqlab.ops.ssm import discretize


def block_hippo_n(P: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-diagonal HiPPO-N eigendecomposition, conjugate-symmetric half (S5 Sec. 4.2).

    Returns ``Lambda [P/2]`` and ``V [P, P/2]`` (columns orthonormal): per block of size P/J,
    the eigenvalues with positive imaginary part of ``A_LegS + p p^T`` and their eigenvectors.
    """
    if blocks < 1 or P % blocks or (P // blocks) % 2:
        raise ValueError(
            f"S5 needs d_state divisible by blocks into blocks of even size, got d_state={P}, "
            f"blocks={blocks}"
        )
    size = P // blocks
    Lambda, _, _, V = hippo.nplr("legs", size)
    keep = Lambda.imag > 0
    Lambda, V = Lambda[keep], V[:, keep]
    V_full = np.zeros((P, P // 2), np.complex128)
    for j in range(blocks):
        V_full[j * size : (j + 1) * size, j * (size // 2) : (j + 1) * (size // 2)] = V
    return np.tile(Lambda, blocks), V_full


def block_ptd(P: int, blocks: int, lam: float | None = None):
    """Block-diagonal S4-PTD eigendecomposition (``ops.hippo.ptd`` of each block of size P/J,
    all modes kept): ``Lambda [P]`` (reflected into Re < 0), ``V [P, P]``, ``V^-1 [P, P]``
    (block diagonal) and the block's ``hippo.PTD``. ``lam=None``: the lambda shipped for the
    block size."""
    if blocks < 1 or P % blocks:
        raise ValueError(f"S5 needs d_state divisible by blocks, got d_state={P}, blocks={blocks}")
    system = hippo.ptd(P // blocks, lam)
    eye = np.eye(blocks)
    return (np.tile(system.Lambda, blocks), np.kron(eye, system.V),
            np.kron(eye, np.linalg.inv(system.V)), system)


S5_INITS = ("hippo-n", "ptd")
C_INITS = ("trunc_normal", "lecun_normal", "complex_normal")
S5_REAL_PARAMS = ("none", *REAL_PARAMS)


@register_mixer("s5")
class S5(SSMOutputStage):
    """S5 mixer: x [batch, length, d_model] -> y [batch, length, d_model].

    Options (defaults as lindermanlab/S5's ``run_train.py`` unless said): ``d_state`` (P),
    ``blocks`` (J), ``init`` (``hippo-n``: block HiPPO-N, P even, P/2 modes by conjugate
    symmetry | ``ptd``: S5-PTD, block S4-PTD with ``ptd_lambda``, all P modes),
    ``c_init`` (``trunc_normal``: real and imaginary parts of C [H, P] truncated normal with
    std 1/sqrt(P), the reference's ``trunc_standard_normal`` | ``lecun_normal``: std
    1/sqrt(P H), the reference's ``lecun_normal`` on [H, P, 2] | ``complex_normal``: C~ drawn
    directly, std sqrt(1/2) per part, no V), ``real_param`` (``none``: Re(Lambda) trained
    directly, the reference's default | ``clip``: min(p, -1e-4), the reference's ``clip_eigs``
    | ``exp``: -exp(p)), ``dt_min``/``dt_max`` (per-mode log-uniform step), ``causal`` (default
    True; False adds a reverse scan with its own C~, summed: bidirectional, no decode),
    ``activation``, ``out``, ``dropout``, ``max_length`` (as in S4D). Defaults that differ from
    the reference: ``blocks=4`` (reference 8) and ``d_state=64`` (256), sized for the small
    models seqlab trains by default (the LRA configs set the paper's). With
    ``real_param="none"`` an eigenvalue may leave the left half-plane in training, as in the
    reference; ``clip`` bounds it.

    SSM parameters (``SSMParam``): ``Lambda_re, Lambda_im [M]``, ``B [M, H, 2]``,
    ``log_dt [M]`` (M = P/2, or P for ``ptd``); ordinary: ``C [dirs, H, M, 2]``, ``D [H]``.
    S5-PTD reports ``cond_V`` and ``rel_norm_E`` of its block (``ops.hippo.ptd``).
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        d_state: int = 64,
        blocks: int = 4,
        init: str = "hippo-n",
        ptd_lambda: float | None = None,
        c_init: str = "trunc_normal",
        real_param: str = "none",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        causal: bool = True,
        activation: str = "gelu",
        out: str = "glu",
        dropout: float = 0.0,
        max_length: int | None = None,
    ):
        H, self.d_model, self.d_state, self.dtype = d_model, d_model, d_state, dtype
        self.init = choice("init", init, S5_INITS)
        self.c_init = choice("c_init", c_init, C_INITS)
        self.real_param = choice("real_param", real_param, S5_REAL_PARAMS)
        self.activation = choice("activation", activation, ACTIVATIONS)
        self.out = choice("out", out, OUTPUTS)
        self.causal = bool(causal)
        self.max_length = max_length
        self.conj_sym = self.init == "hippo-n"
        if self.conj_sym:
            if d_state < 2 or d_state % 2:
                raise ValueError(f"S5 needs an even d_state >= 2 (conjugate pairs), got {d_state}")
            Lambda, V = block_hippo_n(d_state, blocks)  # V [P, P/2], orthonormal columns
            V_inv = V.conj().T
        else:
            Lambda, V, V_inv, system = block_ptd(d_state, blocks, ptd_lambda)
            self.cond_V, self.rel_norm_E = system.cond, system.rel_norm
        M = len(Lambda)
        self.n_modes = M
        re = Lambda.real
        if self.real_param == "exp":
            re = np.log(-re)
        self.Lambda_re = SSMParam(jnp.asarray(re, jnp.float32))
        self.Lambda_im = SSMParam(jnp.asarray(Lambda.imag, jnp.float32))
        self.log_dt = SSMParam(init_log_dt(rngs.params(), M, dt_min, dt_max))
        # B LeCun normal [P, H] (truncated normal, std 1/sqrt(P)), then B~ = V^-1 B
        B = jax.nn.initializers.lecun_normal()(rngs.params(), (d_state, H))
        self.B = SSMParam(complex_param(jnp.asarray(V_inv, jnp.complex64) @ B))
        dirs = 1 if self.causal else 2
        self.C = nnx.Param(self._init_C(rngs.params(), dirs, H, V))
        self.init_output_stage(H, activation=self.activation, out=self.out, dropout=dropout,
                               dtype=dtype, rngs=rngs)

    def _init_C(self, key: jax.Array, dirs: int, H: int, V: np.ndarray) -> jax.Array:
        """C~ [dirs, H, M, 2] (real, imag) as the reference's ``C_init`` options."""
        P, M = V.shape
        if self.c_init == "complex_normal":
            return jax.random.normal(key, (dirs, H, M, 2)) * math.sqrt(0.5)
        # fan_in = P ('trunc_normal', per row of C) or P H ('lecun_normal' on [H, P, 2])
        batch = (0, 1) if self.c_init == "trunc_normal" else (0,)
        C = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=batch)(
            key, (dirs, H, P, 2))
        return complex_param(as_complex(C) @ jnp.asarray(V, jnp.complex64))

    def discrete(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ZOH (S5 eq. (6)): (dLambda [M], dB [M, H], C~ [dirs, H, M]) complex."""
        p = self.Lambda_re[...]
        re = p if self.real_param == "none" else real_part(p, self.real_param)
        Lambda = jax.lax.complex(re, self.Lambda_im[...])
        # one step size per mode: each mode is a row of discretize's [H, N] layout
        dLambda, dB = discretize(Lambda[:, None], as_complex(self.B[...]),
                                 jnp.exp(self.log_dt[...]))
        return dLambda[:, 0], dB, as_complex(self.C[...])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [batch, length, d_model]; mask: [batch, length] bool -> y [batch, length, d_model].

        Padded inputs are zeroed, so the forward scan ignores them and the reverse scan reaches
        each sequence's true end with a zero state.
        """
        check_input(x, self.d_model, "S5")
        check_length(x.shape[1], self.max_length, "S5")
        u = apply_mask(x, mask).astype(jnp.float32)
        dLambda, dB, C = self.discrete()
        Bu = _drive(dB, u)  # [batch, length, M]
        y = self._readout(C[0], linear_scan(dLambda, Bu))
        if not self.causal:
            y = y + self._readout(C[1], linear_scan(dLambda, Bu, reverse=True))
        return apply_mask(self.output_stage(y + self.D[...] * u), mask)

    def _readout(self, C: jax.Array, h: jax.Array) -> jax.Array:
        """``c Re(C~ h)``: C [H, M], h [batch, length, M] -> [batch, length, H]; c = 2 with
        conjugate symmetry (each kept mode stands for a pair), else 1 (S5 eq. (5)).
        ``Re(C~ h) = Re C~ Re h - Im C~ Im h``: two real products, half the arithmetic of the
        complex one whose imaginary part is discarded (15.3 -> 5.6 ms at B=4, L=2048, H=M=128
        on the 2-core CPU; the layer's speed-up is in docs/performance.md)."""
        y = (jnp.einsum("hp,blp->blh", C.real, h.real)
             - jnp.einsum("hp,blp->blh", C.imag, h.imag))
        return 2 * y if self.conj_sym else y

    def init_cache(
        self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32
    ) -> dict:
        """{'state': [batch, M] complex64, 'pos': int32 scalar} (``max_length`` is checked
        against the layer's own ``max_length`` option when one is set)."""
        self._check_causal()
        check_length(max_length, self.max_length, "S5")
        del dtype
        return {
            "state": jnp.zeros((batch_size, self.n_modes), jnp.complex64),
            "pos": jnp.zeros((), jnp.int32),
        }

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Recurrent mode: x [batch, t, d_model] -> (y [batch, t, d_model], cache)."""
        self._check_causal()
        check_input(x, self.d_model, "S5")
        u = x.astype(jnp.float32)
        dLambda, dB, C = self.discrete()
        h = linear_scan(dLambda, _drive(dB, u), h0=cache["state"])
        y = self._readout(C[0], h) + self.D[...] * u
        new = {"state": h[:, -1].astype(jnp.complex64), "pos": cache["pos"] + x.shape[1]}
        return self.output_stage(y), new

    def _check_causal(self) -> None:
        if not self.causal:
            raise ValueError(
                "S5(causal=False) sees future inputs and has no recurrent decode; "
                "build it with causal=True"
            )


def _drive(dB: jax.Array, u: jax.Array) -> jax.Array:
    """``B~ u_t`` for a real input: dB [M, H] complex, u [batch, length, H] real ->
    [batch, length, M] complex, as one real product with the real and imaginary parts of B~
    stacked ([2M, H]) rather than a complex product of a real-valued input (which computes its
    zero imaginary part too)."""
    M = dB.shape[0]
    z = jnp.einsum("ph,blh->blp", jnp.concatenate([dB.real, dB.imag]), u)
    return jax.lax.complex(z[..., :M], z[..., M:])
