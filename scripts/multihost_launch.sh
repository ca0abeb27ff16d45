#!/usr/bin/env bash
# Multi-host training with seqlab: run this same command on every host.
#
# Each process calls jax.distributed.initialize() (mesh.distributed=true), which reads the
# coordinator address, the number of processes and this process's id from the environment.
# The global mesh spans all hosts' devices: mesh.data x mesh.fsdp must equal the total device
# count. Every host iterates over the same global batch order (same seed) and feeds its own
# contiguous slice of rows (seqlab.train.sharding.shard_batch), so train.batch_size is global.
# Checkpoints go to a --workdir that all hosts can read and write (a shared filesystem or GCS).
#
# Example: 2 hosts x 8 GPUs, data-parallel on 8 and parameter-sharded (FSDP) on 2:
#   host 0: JAX_PROCESS_ID=0 scripts/multihost_launch.sh lra/image/s4d
#   host 1: JAX_PROCESS_ID=1 scripts/multihost_launch.sh lra/image/s4d
# On SLURM or Cloud TPU, jax.distributed.initialize() detects all of this by itself; the
# three variables below are then unnecessary.
set -euo pipefail
config=${1:?usage: multihost_launch.sh CONFIG [--set k=v ...]}
shift
export JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-host0.example:1234}
export JAX_NUM_PROCESSES=${JAX_NUM_PROCESSES:-2}
export JAX_PROCESS_ID=${JAX_PROCESS_ID:?set JAX_PROCESS_ID to this host's index}
exec seqlab train "$config" --workdir "${WORKDIR:-/shared/runs/$(basename "$config" .yaml)}" \
  --set mesh.distributed=true --set mesh.data="${MESH_DATA:-8}" --set mesh.fsdp="${MESH_FSDP:-2}" "$@"
