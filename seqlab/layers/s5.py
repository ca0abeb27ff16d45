"""S5: a MIMO diagonal state-space layer computed with a parallel scan (Smith et al. 2023,
'Simplified State Space Layers for Sequence Modeling').

One state of P complex modes shared by all H channels (P/2 kept by conjugate symmetry):
``x_k = dLambda x_{k-1} + dB u_k``, ``y_k = 2 Re(C~ x_k) + D u_k`` with
``dLambda = exp(Lambda dt)``, ``dB = (dLambda - 1) / Lambda * B~`` (ZOH, S5 eq. (6)), the states
computed by ``ops.scan.linear_scan``. Initialised from block-diagonal HiPPO-N (S5 Sec. 4.2):
``Lambda, V`` of the normal part of HiPPO-LegS in each of J blocks, ``B~ = V^H B``, ``C~ = C V``.
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


@register_mixer("s5")
class S5(SSMOutputStage):
    """S5 mixer: x [batch, length, d_model] -> y [batch, length, d_model].

    Options: ``d_state`` (P, even; P/2 complex modes), ``blocks`` (J, HiPPO-N blocks),
    ``real_param`` (exp | clip), ``dt_min``/``dt_max`` (per-mode log-uniform step),
    ``causal`` (default True; False adds a reverse scan with its own C~, summed: bidirectional,
    no decode), ``activation``, ``out``,
    ``dropout``, ``max_length`` (as in S4D).

    SSM parameters (``SSMParam``): ``Lambda_re, Lambda_im [P/2]``, ``B [P/2, H, 2]``,
    ``log_dt [P/2]``; ordinary: ``C [dirs, H, P/2, 2]``, ``D [H]``.
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
        real_param: str = "exp",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        causal: bool = True,
        activation: str = "gelu",
        out: str = "glu",
        dropout: float = 0.0,
        max_length: int | None = None,
    ):
        H, self.d_model, self.d_state, self.dtype = d_model, d_model, d_state, dtype
        self.real_param = choice("real_param", real_param, REAL_PARAMS)
        self.activation = choice("activation", activation, ACTIVATIONS)
        self.out = choice("out", out, OUTPUTS)
        self.causal = bool(causal)
        self.max_length = max_length
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S5 needs an even d_state >= 2 (conjugate pairs), got {d_state}")
        Lambda, V = block_hippo_n(d_state, blocks)
        re = np.log(-Lambda.real) if self.real_param == "exp" else Lambda.real
        self.Lambda_re = SSMParam(jnp.asarray(re, jnp.float32))
        self.Lambda_im = SSMParam(jnp.asarray(Lambda.imag, jnp.float32))
        self.log_dt = SSMParam(init_log_dt(rngs.params(), d_state // 2, dt_min, dt_max))
        # B ~ lecun normal [P, H] in the HiPPO basis, then B~ = V^H B
        B = jax.random.normal(rngs.params(), (d_state, H)) / math.sqrt(H)
        self.B = SSMParam(complex_param(jnp.asarray(V.conj().T, jnp.complex64) @ B))
        dirs = 1 if self.causal else 2
        # C ~ normal [dirs, H, P] with variance 1/P, then C~ = C V
        C = jax.random.normal(rngs.params(), (dirs, H, d_state)) / math.sqrt(d_state)
        self.C = nnx.Param(complex_param(C @ jnp.asarray(V, jnp.complex64)))
        self.init_output_stage(H, activation=self.activation, out=self.out, dropout=dropout,
                               dtype=dtype, rngs=rngs)

    def discrete(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ZOH (S5 eq. (6)): (dLambda [P/2], dB [P/2, H], C~ [dirs, H, P/2]) complex."""
        Lambda = jax.lax.complex(real_part(self.Lambda_re[...], self.real_param),
                                 self.Lambda_im[...])
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
        Bu = jnp.einsum("ph,blh->blp", dB, u)  # [batch, length, P/2]
        y = 2 * jnp.einsum("hp,blp->blh", C[0], linear_scan(dLambda, Bu)).real
        if not self.causal:
            y = y + 2 * jnp.einsum("hp,blp->blh", C[1], linear_scan(dLambda, Bu, reverse=True)).real
        return apply_mask(self.output_stage(y + self.D[...] * u), mask)

    def init_cache(
        self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32
    ) -> dict:
        """{'state': [batch, P/2] complex64, 'pos': int32 scalar} (``max_length`` is checked
        against the layer's own ``max_length`` option when one is set)."""
        self._check_causal()
        check_length(max_length, self.max_length, "S5")
        del dtype
        return {
            "state": jnp.zeros((batch_size, self.d_state // 2), jnp.complex64),
            "pos": jnp.zeros((), jnp.int32),
        }

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Recurrent mode: x [batch, t, d_model] -> (y [batch, t, d_model], cache)."""
        self._check_causal()
        check_input(x, self.d_model, "S5")
        u = x.astype(jnp.float32)
        dLambda, dB, C = self.discrete()
        h = linear_scan(dLambda, jnp.einsum("ph,blh->blp", dB, u), h0=cache["state"])
        y = 2 * jnp.einsum("hp,blp->blh", C[0], h).real + self.D[...] * u
        new = {"state": h[:, -1].astype(jnp.complex64), "pos": cache["pos"] + x.shape[1]}
        return self.output_stage(y), new

    def _check_causal(self) -> None:
        if not self.causal:
            raise ValueError(
                "S5(causal=False) sees future inputs and has no recurrent decode; "
                "build it with causal=True"
            )
