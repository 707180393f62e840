#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md in one go (a device-tool call or any CUDA host
# with JAX, flax and optax): beam-search decoding against HuggingFace on the same GPU
# (needs torch and transformers; batch 8 and 64), then training at the paper's 25k-token
# batch in bf16 for base and big, cuDNN vs XLA attention, remat for big, and a profile
# of base (PROFILE=0: none). PARTS="decode" or PARTS="mfu" runs one half.
# Results under $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu_bench.sh
#   EXTRA="--tokens 512 --seq_len 64 --steps 1 --attention_impl xla" PYTHON=.venv/bin/python \
#     bash benchmarks/gpu_bench.sh   # a CPU dry run
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.95}
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
          'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.txt"
PARTS=${PARTS:-decode mfu}
if [[ $PARTS == *decode* ]]; then
  for batch in 8 64; do
    timeout "${DECODE_TIMEOUT:-240}" $PY benchmarks/bench_decode.py --systems jax,jax-bf16,hf \
      --torch_device cuda --batch $batch --repeats 5 2>&1 | tee -a "$OUT/decode.txt"
  done
fi
bench() {  # one model per process, so each device peak is its own
  timeout "${STEP_TIMEOUT:-170}" $PY benchmarks/bench_mfu.py --out "$OUT/mfu.jsonl" "$@" ${EXTRA:-} \
    2>&1 | grep -v '^{' | tee -a "$OUT/log.txt"
}
if [[ $PARTS == *mfu* ]]; then
  if [ "${PROFILE:-1}" = 1 ]; then
    P1="--profile $OUT/trace_cudnn"; P2="--profile $OUT/trace_xla"; else P1=; P2=; fi
  bench --models base --attention_impl cudnn $P1
  bench --models base --attention_impl xla $P2
  bench --models big --attention_impl cudnn || bench --models big --attention_impl xla
  bench --models big --attention_impl cudnn --remat dots || bench --models big --remat dots
  for impl in cudnn xla; do  # the traces, flattened so that they come back from $OUT
    mv "$OUT"/trace_$impl/base/plugins/profile/*/*.trace.json.gz \
      "$OUT/base_${impl}_trace.json.gz" 2>/dev/null
    rm -rf "$OUT/trace_$impl"
  done
fi
ls -la "$OUT"
