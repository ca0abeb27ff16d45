#!/usr/bin/env bash
# GPU check: one command for a machine with an NVIDIA GPU whose python3 has jax[cuda], flax,
# optax, orbax, einops, torch and triton (fla-core installed from its wheel), without
# `datasets` or `tensorboardX`. Ends within ~8 minutes on an H100/H200 (every step has a time
# limit; the lowering tests and the JAX peers add at most 8 more) and writes OUT/bench.json,
# OUT/peers.json, OUT/imports.txt, OUT/lowering.txt, OUT/jax_peers.txt and OUT/gpu_check.md.
#
#   scripts/gpu_check.sh [OUT]            # default OUT: gpu_check_out
#   scripts/gpu_check.sh --smoke [OUT]    # tiny sizes on any machine (CPU): proves it runs
set -u
cd "$(dirname "$0")/.."
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=.
# The op-level comparisons run in step 3, so the mixer sweep skips them (--no-ops). Each mixer
# runs in its own process with its own time limit and JSON file, so a slow compile or a crash
# loses one row, not the table; no mixer starts after T_BENCH seconds.
if [ "$SMOKE" = 1 ]; then
  BENCH=(--lengths 64 128 --d-model 64 --dtype bfloat16 --device cpu --repeats 1 --budget 5
         --probe quick --no-ops)
  PEERS=(--smoke)
  T_BENCH=600; T_MIXER=150; T_PEERS=300
else
  BENCH=(--lengths 4k 16k --dtype bfloat16 --device gpu --repeats 3 --budget 20 --probe quick
         --no-ops)
  PEERS=()
  T_BENCH=240; T_MIXER=60; T_PEERS=150  # worst case ~7.5 min
fi
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"

# 1. the library imports without datasets / tensorboardX (blocked by a meta-path hook)
$PY - > "$OUT/imports.txt" 2>&1 <<'PYEOF'
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "tensorboardX"):
            raise ImportError(f"{name} is blocked (the GPU check runs without it)")
sys.meta_path.insert(0, Block())
for m in ("seqlab.ops", "seqlab.layers", "seqlab.bench", "seqlab.models"):
    try:
        importlib.import_module(m)
        print("ok  ", m)
    except Exception as e:
        print("FAIL", m, f"{type(e).__name__}: {e}")
PYEOF
cat "$OUT/imports.txt"

# 2. every registered mixer, forward and forward+backward, bf16, against the probe's bound
MIXERS=$($PY -c "import seqlab.layers as l; print(' '.join(sorted(l.MIXERS)))")
START=$SECONDS
# then the chunked mixers again with their passes over chunks as Pallas kernels (rows named
# e.g. "mamba2[implementation=pallas]"), while time is left
for m in $MIXERS deltanet+pallas gated-deltanet+pallas deltaproduct+pallas mamba2+pallas \
         hydra+pallas; do
  if (( SECONDS - START > T_BENCH )); then echo "$m: not started (over ${T_BENCH}s)"; continue; fi
  EXTRA=()
  if [[ $m == *+pallas ]]; then EXTRA=(--mixer-args implementation=pallas); fi
  timeout "$T_MIXER" $PY -m seqlab.bench "${m%+pallas}" "${BENCH[@]}" ${EXTRA[@]+"${EXTRA[@]}"} \
    --json "$OUT/bench_$m.json" > "$OUT/bench_$m.log" 2>&1 \
    || echo "$m: stopped (exit $?), see $OUT/bench_$m.log"
done

# 3. the peers: fla's Triton kernels, cuDNN attention, on the same inputs
timeout "$T_PEERS" $PY scripts/bench/gpu_peers.py "${PEERS[@]}" --json "$OUT/peers.json" \
  || echo "peers stopped (exit $?)"

# 4. lowering for CUDA and TPU (tests/test_lowering.py); on a GPU host the cuDNN attention
#    export that a CPU-only install skips runs for real
JAX_PLATFORMS= timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_lowering.py -rsx > "$OUT/lowering.txt" 2>&1 \
  || echo "lowering: failed or stopped (exit $?), see $OUT/lowering.txt"
tail -3 "$OUT/lowering.txt"

# 5. JAX peers (mamba2-jax, deltanet-tpu, MaxText, recurrentgemma from the package index, and
#    lindermanlab/S5 from a checkout named by $SEQLAB_S5_PATH), when installed; absent ones print
#    "not available". The seqlab bench runs of step 2 show the same peers as columns.
if [ "$SMOKE" = 1 ]; then JP=(--lengths 256 --repeats 1 --rounds 1); else JP=(--lengths 2048 8192); fi
timeout 240 $PY scripts/bench/bench_jax_peers.py "${JP[@]}" > "$OUT/jax_peers.txt" 2>&1 \
  || echo "jax peers stopped (exit $?)"
cat "$OUT/jax_peers.txt"

# 6. the markdown table
$PY scripts/bench/gpu_report.py "$OUT"
echo "== $(date -u +%FT%TZ) done: $OUT/gpu_check.md"
