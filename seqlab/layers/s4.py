"""S4: a diagonal-plus-low-rank state-space layer (Gu et al. 2022, 'Efficiently Modeling Long
Sequences with Structured State Spaces').

Per channel h, the HiPPO matrix in its DPLR form in the conjugate-symmetric eigenbasis
(``ops.hippo.dplr``: N/2 modes ``Lambda``, ``P``, ``B`` standing for the real N-state system
``A = diag(Lambda, conj Lambda) - p p^H``, ``p = [P; conj P]``, which is HiPPO itself), bilinear
discretisation, kernel by Cauchy + Woodbury at the roots of unity (``ops.ssm.kernel_dplr``), FFT
convolution, and the same block as S4D (activation, dropout, GLU output projection).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.layers.common import SSMParam, as_complex, choice, complex_param, reject_renamed
from seqlab.layers.protocol import register_mixer
from seqlab.layers.s4d import S4D
from seqlab.ops import hippo
from seqlab.ops.ssm import c_from_c_tilde, dplr_inverse, dplr_step, kernel_dplr


@register_mixer("s4")
class S4(S4D):
    """S4 mixer: x [batch, length, d_model] -> y [batch, length, d_model].

    Options: ``measure`` in ``legs | legt | lagt | fout`` (default ``legs``); ``d_state`` (N, even),
    ``real_param``, ``dt_min``/``dt_max``, ``causal``, ``activation``, ``out``,
    ``dropout``, ``max_length`` as in :class:`S4D`. Discretisation is bilinear (S4's kernel
    algorithm needs it). ``b_clip`` (default 2.0): ``Im(V^H B)`` clamped as the S4 reference's
    ``nplr(..., B_clip=2.0)`` (None: the exact HiPPO projection; ``ops.hippo.dplr``).

    Trainable SSM parameters (``SSMParam``): ``log_dt [H]``, ``Lambda_re, Lambda_im [H, N/2]``
    (Re Lambda kept negative by ``real_param``; measures whose Re Lambda is 0 start at -1e-4),
    ``P [r, H, N/2, 2]``, ``B [H, N/2, 2]``; ``C [dirs, H, N/2, 2]`` and ``D [H]`` are ordinary.
    The kernel uses the true C (``kernel_dplr`` applies the ``C~ = C (I - dA^L)`` correction),
    so ``decode`` runs the discretised DPLR recurrence with the same C, one step in O(H N r)
    (``ops.ssm.dplr_step``: Woodbury, no dense [H, N, N] matrix is formed or inverted).

    ``c_tilde=True`` (needs ``max_length``): C holds ``C~ = C (I - dA^L)`` for L = max_length
    and is learned directly, as S4's reference implementation does, so the kernel needs no
    ``dA^L`` (a shorter input uses the first entries of the length-L kernel); ``decode``
    converts it back once per call (``ops.ssm.c_from_c_tilde``). The initial C~ is drawn like
    C. Default False: C is the true readout (the behaviour before the option).
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        measure: str = "legs",
        c_tilde: bool = False,
        **options,
    ):
        for fixed, value in (("init", "measure"), ("mode", "fft"), ("disc", "bilinear")):
            if fixed in options and (fixed == "init" or options[fixed] != value):
                raise ValueError(
                    f"S4 does not take {fixed}={options[fixed]!r}"
                    + (" (use measure=...)" if fixed == "init" else f"; it is always {value!r}")
                )
        options = {k: v for k, v in options.items() if k not in ("mode", "disc")}
        if c_tilde and not options.get("max_length"):
            raise ValueError(
                "S4(c_tilde=True) learns C~ = C (I - dA^L) for one kernel length L: set "
                "max_length=L (inputs up to L tokens), or use c_tilde=False"
            )
        self.c_tilde = c_tilde
        super().__init__(d_model, rngs=rngs, dtype=dtype, init=measure, disc="bilinear", **options)
        H = d_model
        self.P = SSMParam(complex_param(np.tile(self._P0[:, None, :], (1, H, 1))))
        del self._P0
        self.measure = measure

    def _diagonal_init(self, N: int, rngs: nnx.Rngs):
        Lambda, P, B = hippo.dplr(choice("measure", self.init, hippo.MEASURES), N, self.b_clip)
        self._P0 = P
        return Lambda, B, None

    def kernel(self, length: int) -> jax.Array:
        """K [dirs, H, length] (S4, Alg. 1)."""
        A, B, C, dt = self.ssm()
        P = as_complex(self.P[...])
        if self.c_tilde:
            L = self.max_length
            return jnp.stack([kernel_dplr(A, P, B, c, dt, L, c_tilde=True)[:, :length]
                              for c in C])
        return jnp.stack([kernel_dplr(A, P, B, c, dt, length) for c in C])

    def _recurrence(self, u: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Discretised DPLR recurrence (S4 eq. (3)): ``x_k = dA x_{k-1} + dB u_k``, output
        ``2 Re(C x_k)``. ``(I - dt/2 A)^-1`` is set up once per call in Woodbury form (O(H N r));
        each step is then O(H N r) (``ops.ssm.dplr_step``).

        u: [batch, t, H] float32; h0: [batch, H, N/2] -> (y [batch, t, H], last state).
        """
        A, B, C, dt = self.ssm()
        P = as_complex(self.P[...])
        if self.c_tilde:
            C = c_from_c_tilde(A, P, C[0], dt, self.max_length)[None]
        inv = dplr_inverse(A, P, dt)

        def step(h, u_k):  # h: [batch, H, N/2], u_k: [batch, H]
            h = dplr_step(inv, P, B, dt, h, u_k)
            return h, 2 * jnp.einsum("hn,bhn->bh", C[0], h).real

        h, y = jax.lax.scan(step, h0.astype(A.dtype), jnp.swapaxes(u, 0, 1))
        return jnp.swapaxes(y, 0, 1), h
