"""Device mesh and shardings: batches on the ``data`` axis, parameters optionally on ``fsdp``."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqlab.config import ConfigError, MeshConfig


def maybe_initialize_distributed(cfg: MeshConfig) -> None:
    """Multi-host: connect the processes. The coordinator address comes from
    JAX_COORDINATOR_ADDRESS, the process count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID;
    unset values are detected by JAX on clusters it knows (SLURM, Cloud TPU, MPI).
    See scripts/multihost_launch.sh."""
    if not cfg.distributed or jax.distributed.is_initialized():
        return
    env = {k: os.environ.get(k) for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    jax.distributed.initialize(
        num_processes=int(env["JAX_NUM_PROCESSES"]) if env["JAX_NUM_PROCESSES"] else None,
        process_id=int(env["JAX_PROCESS_ID"]) if env["JAX_PROCESS_ID"] else None,
    )


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


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A host batch (the global batch, identical on every host) -> global arrays sharded on
    ``data``: each process contributes its contiguous slice of rows."""
    sharding = NamedSharding(mesh, P("data"))
    n_proc, pid = jax.process_count(), jax.process_index()
    out = {}
    for k, v in batch.items():
        rows = v.shape[0] // n_proc
        out[k] = jax.make_array_from_process_local_data(
            sharding, v[pid * rows : (pid + 1) * rows], v.shape
        )
    return out
