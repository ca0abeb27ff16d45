"""Device mesh and shardings: batches on the ``data`` axis, parameters optionally on ``fsdp``.

Many processes (``mesh.distributed``): the mesh spans every process's devices; each process
places the shards of the (identical) initial state that its devices hold (``place``) and feeds
the rows of each global batch that its devices hold (``batch_rows``, ``shard_batch``). What
every process needs from disk, process 0 prepares first (``process_zero_first``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqlab.config import ConfigError, MeshConfig
from seqlab.utils import UserError

T = TypeVar("T")
PREPARE_TIMEOUT_S = 6 * 3600  # the longest a process waits for process 0 to prepare data
_calls = itertools.count()


def maybe_initialize_distributed(cfg: MeshConfig) -> None:
    """Multi-host: connect the processes. The coordinator address comes from
    JAX_COORDINATOR_ADDRESS, the process count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID;
    unset values are detected by JAX on clusters it knows (SLURM, Cloud TPU, MPI).
    See scripts/multihost_launch.sh."""
    if not cfg.distributed or jax.distributed.is_initialized():
        return
    # CPU processes exchange gradients over gloo (TCP); GPUs and TPUs use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    env = {k: os.environ.get(k) for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    jax.distributed.initialize(
        num_processes=int(env["JAX_NUM_PROCESSES"]) if env["JAX_NUM_PROCESSES"] else None,
        process_id=int(env["JAX_PROCESS_ID"]) if env["JAX_PROCESS_ID"] else None,
    )


def process_zero_first(what: str, fn: Callable[[], T],
                       timeout_s: float = PREPARE_TIMEOUT_S) -> T:
    """``fn()`` on process 0, then on every other process: what process 0 generates, downloads
    or caches (under a folder every host sees) the others then read instead of building again.

    Process 0 publishes the outcome in the coordination service's key-value store (the one
    ``jax.distributed`` runs, as orbax uses it): on success the others call ``fn`` themselves; on
    failure they raise a ``UserError`` quoting process 0's error, so no process waits at a
    collective that will never come. Every process must make the same calls in the same order
    (the keys are numbered). One process, or jax.distributed not initialised: ``fn()``.
    what: names the work in messages ("data listops/train").
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return fn()
    from jax._src import distributed  # the coordination service client (no public handle)

    client = distributed.global_state.client
    key = f"seqlab/first/{next(_calls)}"
    if jax.process_index() == 0:
        try:
            out = fn()
        except BaseException as e:
            client.key_value_set(key, f"{type(e).__name__}: {e}")
            raise
        client.key_value_set(key, "ok")
        return out
    try:
        status = client.blocking_key_value_get(key, int(timeout_s * 1000))
    except Exception as e:  # deadline passed, or process 0 (the coordinator) is gone
        raise UserError(
            f"process {jax.process_index()} waited for process 0 to prepare {what} and gave "
            f"up ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); process 0 "
            "stopped or took longer than "
            f"{timeout_s:.0f} s. Its output says why; run the same command again once it is "
            "fixed."
        ) from None
    if status != "ok":
        raise UserError(f"process 0 could not prepare {what}, so this process stops too: "
                        f"{status}")
    return fn()


def make_mesh(cfg: MeshConfig) -> Mesh:
    """A ``data`` x ``fsdp`` mesh over the first data*fsdp devices (all hosts)."""
    n = cfg.data * cfg.fsdp
    devices = jax.devices()
    if cfg.data < 1 or cfg.fsdp < 1 or n > len(devices):
        raise ConfigError(
            f"mesh.data={cfg.data} x mesh.fsdp={cfg.fsdp} needs {n} devices, but "
            f"{len(devices)} are visible ({devices[0].platform}). Lower mesh.data / mesh.fsdp."
        )
    return jax.make_mesh(
        (cfg.data, cfg.fsdp), ("data", "fsdp"), (AxisType.Auto, AxisType.Auto), devices=devices[:n]
    )


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis divisible by ``fsdp`` on the fsdp axis; replicate otherwise."""
    if fsdp == 1 or not shape:
        return P()
    candidates = [i for i, s in enumerate(shape) if s % fsdp == 0 and s >= fsdp]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: shape[i])
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def state_shardings(state, mesh: Mesh):
    """NamedShardings for a (pure) state pytree."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp)), state)


def is_main_process() -> bool:
    """Process 0: the one that writes metrics, configs, results and plots."""
    return jax.process_index() == 0


def place(state, shardings):
    """Put a state that every process built identically (same seed) onto the mesh: each process
    fills the shards its own devices hold. PRNG key arrays travel as their key data."""
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)

    def one(x, sharding):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, state, shardings)


def batch_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """The rows ``(start, stop)`` of each global batch of ``batch_size`` that this process's
    devices hold (all of them with one process)."""
    index = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,))
    blocks = sorted({(i[0].start or 0, batch_size if i[0].stop is None else i[0].stop)
                     for i in index.values()})
    start, stop = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != stop - start:
        raise ConfigError(
            f"this process's devices hold rows {blocks} of each batch, not one contiguous "
            "block; the mesh must order its devices by process (jax.make_mesh does)."
        )
    return start, stop


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_size: int | None = None
                ) -> dict[str, jax.Array]:
    """This process's rows of a global batch (``batch_rows``) -> global arrays sharded on
    ``data``. batch_size: the global batch (default: the rows given, i.e. one process)."""
    sharding = NamedSharding(mesh, P("data"))
    out = {}
    for k, v in batch.items():
        shape = (batch_size or v.shape[0], *v.shape[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
    return out
