#!/usr/bin/env bash
# End-to-end on one GPU in one call (issue 25, item 4): train.py --config=configs/base.py
# for $MINUTES minutes with evaluation and checkpoints, its steps/s against bench_mfu's step
# at the same batch shape (98 packed rows x 256 tokens = 25,088 tokens a side, bf16), then
# PARTS=decode of gpu_bench.sh (beam search against HuggingFace on the same GPU).
# With the TensorFlow stack, also the input pipeline's tokens/s on 1, 2, 4 and 16 cores.
# Results under $OUT/benchmarks/results/ (e2e_*.{txt,json,jsonl}, decode.txt).
#
# What train.py needs beyond JAX, flax, optax and orbax: ml_collections and absl (configs,
# flags), tensorboard (the metric writer), tqdm; for the Bible corpus also tensorflow,
# tensorflow-text, tensorflow-datasets and sentencepiece (the tf.data pipeline; sacrebleu
# for BLEU). Without the TensorFlow stack the run trains on dataset=synthetic (random
# ids through the same loop, evaluation and checkpoints; no tokenizer, no BLEU). Pure-Python
# packages missing on the host are installed from $WHEELS (a folder of wheels carried with
# the working tree, e.g. `pip download -d .whl ml_collections tensorboard ...` for the
# device's Python) when given. The first line of e2e_env.txt lists what was missing.
#   OUT=/tmp/e2e bash benchmarks/gpu_e2e.sh
#   DRY=1 PYTHON=.venv/bin/python OUT=/tmp/e2e bash benchmarks/gpu_e2e.sh  # tiny CPU dry run
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_e2e}
RES=$OUT/benchmarks/results
mkdir -p "$RES"
PY=${PYTHON:-python3}
MINUTES=${MINUTES:-4}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.95}

missing() {  # the modules of "$@" this Python cannot import
  $PY -c "import importlib.util as u, sys
print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" "$@"
}
LOOP_MODULES="ml_collections absl tensorboard tqdm orbax"
DATA_MODULES="tensorflow tensorflow_text tensorflow_datasets sentencepiece sacrebleu"
if [ -n "${WHEELS:-}" ] && [ -n "$(missing $LOOP_MODULES)" ]; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" ml_collections tensorboard tqdm \
    2>&1 | tail -3
fi
{ echo "missing: loop [$(missing $LOOP_MODULES)] data [$(missing $DATA_MODULES)]"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
          'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$RES/e2e_env.txt"
if [ -n "$(missing $LOOP_MODULES)" ]; then
  echo "error: train.py needs $(missing $LOOP_MODULES) (carry wheels and set WHEELS)" >&2
  exit 2
fi

ROWS=98 LEN=256 VOCAB=8000 LOG=50
if [ "${DRY:-0}" = 1 ]; then  # a CPU check of the script itself: tiny model and batch
  ROWS=4 LEN=32 MINUTES=1 LOG=5
  SIZE="--config.model.d_model=32 --config.model.d_ff=64 --config.model.num_heads=2
        --config.model.num_encoder_layers=1 --config.model.num_decoder_layers=1"
  BENCH_SIZE="--tokens 128 --seq_len 32 --steps 2 --warmup 1"
else
  SIZE="" BENCH_SIZE="--tokens $((ROWS * LEN)) --seq_len $LEN"
fi
if [ -z "$(missing $DATA_MODULES)" ]; then
  DATA="--config.dataset=bible --config.source_lang=en --config.target_lang=es
        --config.vocab_model_type=unigram --config.num_bleu_sentences=100"
else
  DATA="--config.dataset=synthetic --config.num_bleu_sentences=0"
fi
WORKDIR=$OUT/e2e_workdir
rm -rf "$WORKDIR"
# Paper base model and recipe, bf16 compute; evaluation every minute, checkpoints every 200
# steps (async), the last 2 averaged at the end.
timeout $(( ${MINUTES%.*} * 60 + 600 )) $PY train.py --config=configs/base.py \
  --workdir="$WORKDIR" $DATA $SIZE --config.vocab_size=$VOCAB --config.max_len=$LEN \
  --config.batching=pack --config.batch_size=$ROWS --config.model.dtype=bfloat16 \
  --config.train_minutes="$MINUTES" --config.eval_every_minutes=1 \
  --config.eval_every_steps=1000000 --config.num_eval_batches=20 \
  --config.save_every_steps=200 --config.keep_checkpoints=2 --config.average_last=2 \
  --config.log_every_steps=$LOG --config.progress_bar=False 2>&1 | tail -40 \
  | tee "$RES/e2e_train_log.txt"
cp "$WORKDIR/metrics.jsonl" "$RES/e2e_metrics.jsonl" 2>/dev/null
ls -R "$WORKDIR" > "$RES/e2e_workdir_listing.txt" 2>&1

rm -f "$RES/e2e_bench_mfu.jsonl"
timeout 300 $PY benchmarks/bench_mfu.py --models base --vocab_size $VOCAB $BENCH_SIZE \
  --out "$RES/e2e_bench_mfu.jsonl" 2>&1 | grep -v '^{' | tee -a "$RES/e2e_train_log.txt"
$PY - "$RES" <<'EOF' | tee "$RES/e2e_summary.json"
import json, os, statistics, sys
res = sys.argv[1]
lines = [json.loads(l) for l in open(os.path.join(res, 'e2e_metrics.jsonl'))]
steps = [l['perf/step_time_s'] for l in lines if 'perf/step_time_s' in l][1:]  # 1st: compile
evals = [l for l in lines if any(k.startswith('eval/') for k in l)]
bench = json.loads(open(os.path.join(res, 'e2e_bench_mfu.jsonl')).readline())
step = statistics.median(steps) if steps else float('nan')
print(json.dumps({'train_step_s': step, 'bench_mfu_step_s': bench['step_s'],
                  'train_over_bench': step / bench['step_s'], 'within_10_percent':
                  step <= 1.1 * bench['step_s'], 'train_mfu': statistics.median(
                      [l['perf/mfu'] for l in lines if 'perf/mfu' in l][1:] or [float('nan')]),
                  'bench_mfu': bench.get('mfu'), 'log_intervals': len(steps),
                  'evaluations': len(evals), 'last_step': lines[-1]['step']}, indent=1))
EOF

if [ -z "$(missing $DATA_MODULES)" ]; then  # the input pipeline on this host's cores
  for cores in 1 2 4 16; do
    [ "$cores" -le "$(nproc --all)" ] || continue
    taskset -c 0-$((cores - 1)) timeout 300 $PY benchmarks/bench_input_pipeline.py \
      --batching pack --workdir "$OUT/bench_input" 2>&1 | grep 'real tokens' \
      | tee -a "$RES/e2e_input_pipeline.txt"
  done
fi
if [ "${DRY:-0}" != 1 ]; then
  PARTS=decode OUT="$OUT/decode" PYTHON=$PY bash benchmarks/gpu_bench.sh
  cp "$OUT/decode/decode.txt" "$OUT/decode/env.txt" "$RES/" 2>/dev/null
fi
ls -la "$RES"
