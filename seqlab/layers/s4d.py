"""S4D: H independent diagonal state-space models (Gu et al. 2022, 'On the Parameterization and
Initialization of Diagonal State Space Models'), and S4-PTD (Yu et al. 2023).

Per channel h: ``x' = diag(Lambda_h) x + B_h u_h``, ``y_h = 2 Re(C_h x) + D_h u_h`` with N/2
complex modes (d_state = N), discretised with step ``dt_h = exp(log_dt_h)`` (ZOH or bilinear)
and computed as a long convolution (``kernel_diag`` + ``fft_conv``) or a linear scan. The block
around the SSM follows the S4 repository: activation, dropout, output projection (GLU).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.layers.common import (
    ACTIVATIONS,
    CLIP_MAX,
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
from seqlab.ops.ssm import DISCRETIZATIONS, discretize, fft_conv, kernel_diag

MODES = ("fft", "scan")


@register_mixer("s4d")
class S4D(SSMOutputStage):
    """S4D mixer: x [batch, length, d_model] -> y [batch, length, d_model].

    Options: ``d_state`` (N, even; N/2 complex modes per channel), ``init`` in
    ``lin | inv | legs | ptd`` (default ``legs``, S4D-LegS), ``disc`` in ``zoh | bilinear``,
    ``real_param`` in ``exp`` (Re Lambda = -exp(p)) | ``clip`` (Re Lambda = min(p, -1e-4)),
    ``dt_min``/``dt_max`` (log-uniform init of dt), ``causal`` (default True; False adds a
    second C for the time-reversed direction, outputs summed: bidirectional, no decode),
    ``activation`` (gelu | silu | relu | identity), ``out`` (glu | linear | none: output
    projection), ``dropout``, ``mode`` (fft | scan), ``max_length`` (optional: longer inputs are
    a clear error).

    ``b_clip`` (default 2.0, the S4 reference's ``B_clip``): S4D-LegS's ``Im(V^H B)`` is clamped
    to ``[-b_clip, b_clip]`` at init (``ops.hippo.dplr``; None keeps the exact projection).
    ``b_half`` (default True): S4D-LegS's B is then halved, the S4D theorem's ``B/2``; False
    keeps the S4 reference code's unhalved B (``ops.hippo.diagonal_init``).

    ``Re(Lambda)`` is floored at -1e-4 at init (strictly stable). S4-PTD keeps all N modes
    (``n_modes``; see ``ops.hippo.ptd``); below, N/2 stands for ``n_modes``.

    Trainable SSM parameters (``SSMParam``: own lr, no weight decay): ``log_dt [H]``,
    ``Lambda_re, Lambda_im [H, N/2]``, ``B [H, N/2, 2]``. ``C [dirs, H, N/2, 2]`` and ``D [H]``
    are ordinary parameters, as in S4.
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        d_state: int = 64,
        init: str = "legs",
        disc: str = "zoh",
        real_param: str = "exp",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        causal: bool = True,
        activation: str = "gelu",
        out: str = "glu",
        dropout: float = 0.0,
        mode: str = "fft",
        max_length: int | None = None,
        b_clip: float | None = 2.0,
        b_half: bool = True,
    ):
        self.d_model, self.d_state, self.dtype, self.init = d_model, d_state, dtype, init
        self.b_clip, self.b_half = b_clip, bool(b_half)
        self.disc = choice("disc", disc, DISCRETIZATIONS)
        self.real_param = choice("real_param", real_param, REAL_PARAMS)
        self.activation = choice("activation", activation, ACTIVATIONS)
        self.out = choice("out", out, OUTPUTS)
        self.mode = choice("mode", mode, MODES)
        self.causal = bool(causal)
        self.max_length = max_length
        Lambda, B, C0 = self._diagonal_init(d_state, rngs)
        H, M = d_model, len(Lambda)
        self.n_modes = M
        self.log_dt = SSMParam(init_log_dt(rngs.params(), H, dt_min, dt_max))
        re = np.tile(np.minimum(Lambda.real, CLIP_MAX), (H, 1))  # strictly stable at init
        re = np.log(-re) if self.real_param == "exp" else re
        self.Lambda_re = SSMParam(jnp.asarray(re, jnp.float32))
        self.Lambda_im = SSMParam(jnp.asarray(np.tile(Lambda.imag, (H, 1)), jnp.float32))
        self.B = SSMParam(complex_param(np.tile(B, (H, 1))))
        dirs = 1 if self.causal else 2
        if C0 is None:  # C ~ complex standard normal (variance 1/2 per part), as in S4
            C = jax.random.normal(rngs.params(), (dirs, H, M, 2)) * math.sqrt(0.5)
        else:  # a change of basis (S4-PTD: C~ = (C V) * V^-1 B, C real standard normal)
            C_real = jax.random.normal(rngs.params(), (dirs, H, d_state))
            C = complex_param(C_real @ jnp.asarray(C0, jnp.complex64))
        self.C = nnx.Param(C)
        self.init_output_stage(H, activation=self.activation, out=self.out, dropout=dropout,
                               dtype=dtype, rngs=rngs)

    def _diagonal_init(self, N: int, rngs: nnx.Rngs):
        """(Lambda [N/2], B [N/2], basis for C [N, N/2] or None) from ``ops.hippo``."""
        init = choice("init", self.init, hippo.DIAGONAL_INITS)
        Lambda, B = hippo.diagonal_init(init, N, B_clip=self.b_clip, B_half=self.b_half)
        return Lambda, B, None

    # ---- SSM parameters ----------------------------------------------------------------------
    def ssm(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Continuous parameters (A [H, N/2], B [H, N/2], C [dirs, H, N/2] complex, dt [H])."""
        A = jax.lax.complex(real_part(self.Lambda_re[...], self.real_param), self.Lambda_im[...])
        return A, as_complex(self.B[...]), as_complex(self.C[...]), jnp.exp(self.log_dt[...])

    def kernel(self, length: int) -> jax.Array:
        """K [dirs, H, length] (S4D eq. (6))."""
        A, B, C, dt = self.ssm()
        return jnp.stack([kernel_diag(A, B, c, dt, length, self.disc) for c in C])

    def _ssm_scan(self, u: jax.Array, C: jax.Array, reverse: bool) -> jax.Array:
        """Recurrent form: u [batch, length, H] float32 -> y [batch, length, H] (no D)."""
        A, B, _, dt = self.ssm()
        dA, dB = discretize(A, B, dt, self.disc)
        h = linear_scan(dA[None, None], dB * u[..., None], reverse=reverse)  # [b, l, H, N/2]
        return 2 * jnp.einsum("hn,blhn->blh", C, h).real

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [batch, length, d_model]; mask: [batch, length] bool -> y [batch, length, d_model].

        Padded inputs are zeroed first; the reverse direction is anti-causal (position t sees
        s >= t), so zeros after a sequence's true end contribute nothing and its state starts
        from zero at the true end: padding never changes the outputs at real positions.
        """
        check_input(x, self.d_model, type(self).__name__)
        check_length(x.shape[1], self.max_length, type(self).__name__)
        u = apply_mask(x, mask).astype(jnp.float32)
        D = self.D[...]
        if self.mode == "fft":
            K = self.kernel(x.shape[1])
            y = fft_conv(u, K[0], D, None if self.causal else K[1])
        else:
            C = self.ssm()[2]
            y = self._ssm_scan(u, C[0], reverse=False) + D * u
            if not self.causal:
                y = y + self._ssm_scan(u, C[1], reverse=True)
        return apply_mask(self.output_stage(y), mask)

    # ---- recurrent decode --------------------------------------------------------------------
    def init_cache(
        self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32
    ) -> dict:
        """{'state': [batch, H, N/2] complex64 (zeros), 'pos': int32 scalar}.

        The recurrence itself has no length limit; ``max_length`` is checked against the
        layer's own ``max_length`` option when one is set.
        """
        self._check_causal()
        check_length(max_length, self.max_length, type(self).__name__)
        del dtype
        return {
            "state": jnp.zeros((batch_size, self.d_model, self.n_modes), jnp.complex64),
            "pos": jnp.zeros((), jnp.int32),
        }

    def _check_causal(self) -> None:
        if not self.causal:
            raise ValueError(
                f"{type(self).__name__}(causal=False) sees future inputs and has no recurrent "
                "decode; build it with causal=True"
            )

    def _recurrence(self, u: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x_k = dA x_{k-1} + dB u_k``, ``2 Re(C x_k)`` (S4D eq. (5)) from state h0.

        u: [batch, t, H] float32; h0: [batch, H, N/2] -> (y [batch, t, H], last state).
        """
        A, B, C, dt = self.ssm()
        dA, dB = discretize(A, B, dt, self.disc)
        h = linear_scan(dA[None, None], dB * u[..., None], h0=h0)
        return 2 * jnp.einsum("hn,blhn->blh", C[0], h).real, h[:, -1]

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Recurrent mode: x [batch, t, d_model] (t >= 1) -> (y [batch, t, d_model], cache).

        Token-by-token decode reproduces ``__call__`` on the whole sequence.
        """
        self._check_causal()
        check_input(x, self.d_model, type(self).__name__)
        u = x.astype(jnp.float32)
        y, h = self._recurrence(u, cache["state"])
        new = {"state": h.astype(jnp.complex64), "pos": cache["pos"] + x.shape[1]}
        return self.output_stage(y + self.D[...] * u), new


@register_mixer("s4-ptd")
class S4PTD(S4D):
    """S4-PTD (Yu et al. 2023, Sec. 4): S4D initialised by perturb-then-diagonalise of HiPPO-LegS.

    ``A + E = V Lambda V^-1`` with E the optimised perturbation of ``ops.hippo.ptd`` (Adam on
    ``kappa(V)^2 + ptd_lambda ||E||``; shipped arrays, see ``ops.hippo.ptd_data_path``):
    all N eigenvalues (``n_modes = N``, output ``2 Re(C~ x)`` as the reference), those E pushed
    right reflected (``Re = -|Re|``), ``B~ = 1`` and ``C~ = (C V) * V^-1 B`` with C real
    standard normal [dirs, H, N] (V^-1 B folded into C, as AnnanYu/Approximate_Diagonal).
    ``ptd_lambda``: None (default) takes the lambda of the array shipped for ``d_state``
    (``ops.hippo.default_lambda``; a size with no shipped array is an error naming
    ``scripts/ptd_perturbation.py``). The layer reports
    ``cond_V = kappa_2(V)`` and ``rel_norm_E = ||E||_F / ||A||_F``.

    Difference from the reference: B~ is kept as a trainable SSM parameter (starting at 1; the
    reference drops B, which only enters the kernel as the product C~ B~). Other options as S4D.
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        ptd_lambda: float | None = None,
        **options,
    ):
        if "init" in options:
            raise ValueError("S4PTD fixes init='ptd'; use 's4d' for other diagonal inits")
        for old in ("eps", "ptd_seed"):
            if old in options:
                raise ValueError(
                    f"S4PTD no longer takes {old}: its perturbation E is optimised for a "
                    "well-conditioned V (ops.hippo.ptd), not drawn at random; drop it, and set "
                    "ptd_lambda (the weight of ||E||) if needed")
        self.ptd_lambda = ptd_lambda
        super().__init__(d_model, rngs=rngs, dtype=dtype, init="ptd", **options)

    def _diagonal_init(self, N: int, rngs: nnx.Rngs):
        lam = hippo.default_lambda(N) if self.ptd_lambda is None else self.ptd_lambda
        system = hippo.ptd(N, lam)
        self.cond_V, self.rel_norm_E = system.cond, system.rel_norm
        return system.Lambda, np.ones_like(system.B), system.V * system.B
