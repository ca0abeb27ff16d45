#!/usr/bin/env bash
# Multi-process seqlab training over jax.distributed (docs/multihost.md has the recipes and what
# each process prints).
#
#   scripts/multihost_launch.sh CONFIG [--set key=value ...]
#
# Two modes:
# - one process per host (TPU pod slice, several GPU nodes): run this same command on every
#   host. JAX reads the coordinator address, the process count and this process's id from
#   JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or finds them itself on
#   Cloud TPU, SLURM and Open MPI.
# - LOCAL_PROCESSES=N: start N processes on this machine, connected over 127.0.0.1 on a free
#   port. With GPUs, process i sees GPUs [i*G, (i+1)*G) (G = GPUS_PER_PROCESS, default 1);
#   with JAX_PLATFORMS=cpu each process simulates DEVICES_PER_PROCESS CPU devices (default 4)
#   and the processes exchange gradients over gloo (how the test suite runs this script).
#   SIGTERM to this script is passed to every process (each checkpoints and exits 3; Ctrl-C
#   in a terminal reaches them all by itself); if one process fails, the others are stopped. The exit status is the first failure's, 3
#   after a preemption, else 0.
#
# Needs bash >= 5.1 (wait -n -p). Environment: WORKDIR (default runs/<config name>; gs:// and other fsspec paths work: every
# process must see the same folder), MESH_DATA / MESH_FSDP (default: the config's mesh; their
# product must equal the number of devices over all processes), PYTHON (default python3).
set -euo pipefail
config=${1:?usage: multihost_launch.sh CONFIG [--set key=value ...]}
shift
workdir=${WORKDIR:-runs/$(basename "$config" .yaml)}
args=(train "$config" --workdir "$workdir" --set mesh.distributed=true)
[[ -n "${MESH_DATA:-}" ]] && args+=(--set "mesh.data=$MESH_DATA")
[[ -n "${MESH_FSDP:-}" ]] && args+=(--set "mesh.fsdp=$MESH_FSDP")
args+=("$@")
seqlab=("${PYTHON:-python3}" -m seqlab.cli)

if [[ -z "${LOCAL_PROCESSES:-}" ]]; then
  exec "${seqlab[@]}" "${args[@]}"
fi

n=$LOCAL_PROCESSES
port=${COORDINATOR_PORT:-$("${PYTHON:-python3}" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < n; i++)); do
  if [[ "${JAX_PLATFORMS:-}" == cpu ]]; then
    device_env=(XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}")
  else
    g=${GPUS_PER_PROCESS:-1}
    device_env=(CUDA_VISIBLE_DEVICES="$(seq -s, $((i * g)) $((i * g + g - 1)))")
  fi
  env "${device_env[@]}" JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" \
    JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" "${seqlab[@]}" "${args[@]}" &
  pids+=($!)
done

forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap ':' INT  # Ctrl-C in a terminal reaches every process of the group by itself

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=""
  code=0
  wait -n -p done_pid "${running[@]}" || code=$?
  [[ -z "$done_pid" ]] && continue  # a trapped signal interrupted wait; children still run
  still=()
  for p in "${running[@]}"; do [[ "$p" != "$done_pid" ]] && still+=("$p"); done
  running=("${still[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    ((code != 3)) && forward TERM  # a failure: the others would wait for it forever
  fi
done
exit "$status"
