"""Orbax checkpoints of the whole training state: model (params, batch stats, RNG streams),
optimiser, step and data-loader position; restored onto an abstract state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from seqlab.utils import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that exists but cannot be restored (corrupted or incompatible)."""


def _to_savable(tree):
    """PRNG key arrays -> their uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x)
            if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
        ),
        tree,
    )


def _abstract(template):
    """ShapeDtypeStructs (with shardings) of a concrete template state, keys as their data."""

    def conv(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(conv, template)


def _from_savable(tree, template):
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        if jnp.issubdtype(t.dtype, jax.dtypes.prng_key)
        else x,
        tree,
        template,
    )


class Checkpoints:
    """A CheckpointManager in ``directory`` keeping ``max_to_keep`` steps.

    name: the prefix of its barriers in JAX's coordination service (many processes). Two
    managers that save the same step at once (the latest and the best checkpoint) would
    otherwise both wait at ``_async_write_complete.<step>``, and the second one fails ("already
    ongoing"), leaving the processes waiting for a barrier that never completes."""

    def __init__(self, directory: str | epath.PathLike, max_to_keep: int, name: str):
        self.directory = epath.Path(directory)
        if "://" not in str(self.directory):
            self.directory = self.directory.absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=name)),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (a pytree of arrays) and JSON ``meta`` as ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_savable(state)), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, step: int, template) -> tuple[object, dict]:
        """Restore ``step`` with the structure, shapes, dtypes and shardings of ``template``
        (a concrete state of the same model, e.g. a freshly initialised one)."""
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(template)),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types for unreadable or mismatched files
            reason = " ".join(str(e).split())[:300]  # one line, however orbax formats it
            raise CheckpointError(
                f"the checkpoint of step {step} in {self.directory} cannot be restored: "
                f"{type(e).__name__}: {reason}. It is corrupted or was written for a "
                f"different model. Nothing was deleted: move that step's folder away to resume "
                f"from an earlier step, or train in a new --workdir."
            ) from None
        leaves, expected = jax.tree.leaves(out.state), jax.tree.leaves(_abstract(template))
        ok = len(leaves) == len(expected) and all(
            a.shape == b.shape for a, b in zip(leaves, expected, strict=True)
        )
        if not ok:
            raise CheckpointError(
                f"the checkpoint of step {step} in {self.directory} does not match the model "
                f"(different structure or shapes). Train in a new --workdir."
            )
        return _from_savable(out.state, template), dict(out.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
