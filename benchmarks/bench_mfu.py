"""Step time, tokens/s and MFU of the real train step on synthetic token batches.

The paper's batch (§5.1): ~25,000 source + 25,000 target tokens, here as dense
[rows, --seq_len] rows (no padding) of random ids, bf16 compute, float32 params
and Adam. Model FLOPs are `metrics.training_flops` (formula in
`transformer_jax/training/metrics.py`); MFU = model FLOPs / step time / (devices x device
peak), the peak from `metrics.PEAK_TFLOPS` or --peak_tflops. XLA's own FLOP count
of the compiled step is printed next to it as a cross-check. Needs only JAX,
flax and optax (no TensorFlow, no ml_collections).

  python benchmarks/bench_mfu.py                          # base and big, 25k tokens
  python benchmarks/bench_mfu.py --models big --remat dots
  python benchmarks/bench_mfu.py --tokens 1024 --steps 2  # CPU sanity run
  python benchmarks/bench_mfu.py --models big --memory_only  # compile only: memory estimate
  python benchmarks/bench_mfu.py --models base --profile /tmp/prof  # + where device time goes
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_jax import TransformerConfig, sharding  # noqa: E402
from transformer_jax.training import loss, metrics, train_lib
from transformer_jax.training import optimizer as optimizer_lib

# The paper's optimisation recipe (§5.3-5.4), as the train step reads it.
RECIPE = types.SimpleNamespace(
    label_smoothing=0.1, warmup_steps=4000, learning_rate_multiplier=1.0, adam_b1=0.9,
    adam_b2=0.98, adam_eps=1e-9, grad_clip_norm=0.0, grad_accum_steps=1, cooldown_steps=0,
    num_train_steps=100_000, loss_chunk_tokens=loss.CHUNK_TOKENS,
    flatten_optimizer=False)
GIB = 2.0 ** 30


def model_config(name: str, args: argparse.Namespace) -> TransformerConfig:
  preset = {'base': TransformerConfig.base, 'big': TransformerConfig.big}[name]
  return preset(args.vocab_size, dtype=jnp.dtype(args.dtype), remat=args.remat,
                attention_impl=args.attention_impl, max_len=max(args.seq_len, 512))


def synthetic_batch(rows: int, length: int, vocab_size: int) -> dict[str, np.ndarray]:
  """Dense [rows, length] random source and target ids (no padding: every token is real)."""
  rng = np.random.default_rng(0)
  return {k: rng.integers(3, vocab_size, (rows, length), dtype=np.int32)
          for k in ('inputs', 'targets')}


def memory(compiled: jax.stages.Compiled) -> dict[str, float]:
  """Per-device GiB from XLA's memory analysis: arguments, temporaries and their peak."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  args_gib = m.argument_size_in_bytes / GIB
  temp_gib = m.temp_size_in_bytes / GIB
  out_gib = (m.output_size_in_bytes - m.alias_size_in_bytes) / GIB
  return {'arguments_gib': args_gib, 'temporaries_gib': temp_gib,
          'peak_gib': args_gib + out_gib + temp_gib}


def bench(name: str, args: argparse.Namespace, mesh: jax.sharding.Mesh) -> dict:
  cfg = model_config(name, args)
  shards = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
  rows = max(shards, round(args.tokens / args.seq_len / shards) * shards)
  batch = synthetic_batch(rows, args.seq_len, args.vocab_size)
  recipe = types.SimpleNamespace(**{**vars(RECIPE), 'loss_chunk_tokens': args.loss_chunk_tokens,
                                    'flatten_optimizer': args.flatten_optimizer})
  optimizer, schedule = optimizer_lib.create_optimizer(recipe, cfg.d_model)
  step = train_lib.make_train_step(cfg, recipe, mesh, optimizer, schedule)  # traced once, below
  abstract = train_lib.abstract_train_state(cfg, optimizer, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                    for k, v in batch.items()}
  start = time.perf_counter()
  compiled = step.lower(abstract, abstract_batch).compile()
  counts = metrics.param_split(abstract.params)
  tokens = rows * args.seq_len
  flops = metrics.training_flops(cfg, counts, tokens, tokens, args.seq_len, args.seq_len)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result = {
      'model': name, 'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'mesh': dict(mesh.shape), 'dtype': args.dtype, 'remat': args.remat,
      'attention_impl': args.attention_impl, 'loss_chunk_tokens': args.loss_chunk_tokens,
      'flatten_optimizer': args.flatten_optimizer, 'rows': rows, 'seq_len': args.seq_len,
      'tokens_per_side': tokens, 'params': counts['total'],
      'compile_s': time.perf_counter() - start, 'model_tflop_per_step': flops / 1e12,
      'xla_tflop_per_step': float((cost or {}).get('flops', float('nan'))) * jax.device_count()
                            / 1e12, **memory(compiled)}
  if args.memory_only:
    return result
  state = train_lib.create_train_state(cfg, optimizer, mesh, seed=0)
  global_batch = sharding.shard_batch(batch, mesh)
  for _ in range(args.warmup):
    state, _ = compiled(state, global_batch)
  jax.block_until_ready(state)
  synced = []  # each step waited for: pays the host's dispatch of every kernel in full
  for _ in range(args.steps):
    begin = time.perf_counter()
    state, out = jax.block_until_ready(compiled(state, global_batch))
    synced.append(time.perf_counter() - begin)
  times = []  # steps dispatched back to back, as the training loop runs them
  for _ in range(3):
    begin = time.perf_counter()
    for _ in range(args.steps):
      state, out = compiled(state, global_batch)
    jax.block_until_ready((state, out))
    times.append((time.perf_counter() - begin) / args.steps)
  step_s = statistics.median(times)
  peak = metrics.peak_flops(jax.devices()[0], args.peak_tflops)
  result.update({'step_s': step_s, 'steps': 3 * args.steps,
                 'step_s_synced': statistics.median(synced),
                 'target_tokens_per_s': tokens / step_s,
                 'model_tflops_per_s': flops / step_s / 1e12,
                 'mfu': flops / step_s / (peak * jax.device_count()) if peak else None,
                 'loss': float(out['loss'] / out['tokens'])})
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:  # what the allocator really held (GPU/TPU)
    result['device_peak_gib'] = stats['peak_bytes_in_use'] / GIB
  if args.profile:
    trace_dir = os.path.join(args.profile, name)
    with jax.profiler.trace(trace_dir):
      for _ in range(3):
        state, out = compiled(state, global_batch)
      jax.block_until_ready((state, out))
    result['profile'] = device_time_breakdown(trace_dir, steps=3)
  return result


def _kernel_kind(name: str) -> str:
  """A coarse class of a device op from its name (cuDNN/cuBLAS kernel or XLA fusion)."""
  lowered = name.lower()
  for kind, keys in (('attention (cudnn)', ('cudnn', 'fmha', 'flash', 'sdpa')),
                     ('matmul', ('gemm', 'cublas', 'cutlass', 'matmul', 'dot', 'sm90_xmma',
                                 'nvjet')),
                     ('reduce', ('reduce', 'softmax', 'norm')),
                     ('copy/transpose', ('copy', 'transpose', 'memcpy', 'memset')),
                     ('elementwise fusion', ('fusion', 'loop', 'input', 'add', 'multiply'))):
    if any(k in lowered for k in keys):
      return kind
  return 'other'


def device_time_breakdown(trace_dir: str, steps: int) -> dict:
  """Kernel time per step by op class and the top kernels, from a jax.profiler trace.

  Reads the `*.trace.json.gz` the profiler writes: complete events on the 'Stream'
  lines of each accelerator process (/device:GPU:0 ...), in ms per step.
  """
  path = max(glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.trace.json.gz')),
             key=os.path.getmtime)  # the latest trace
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    events = json.load(f)['traceEvents']
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and '/device:' in e['args'].get('name', '') and 'CPU' not in e['args']['name']}
  streams = {(e['pid'], e['tid']) for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name' and e['pid'] in devices
             and 'Stream' in e['args'].get('name', '')}
  by_kind, by_op = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and (e.get('pid'), e.get('tid')) in streams and 'dur' in e:
      by_kind[_kernel_kind(e['name'])] += e['dur'] / 1e3 / steps
      by_op[e['name'][:90]] += e['dur'] / 1e3 / steps
  return {'ms_per_step': round(sum(by_kind.values()), 2),
          'by_kind': {k: round(v, 2) for k, v in by_kind.most_common()},
          'top': {k: round(v, 2) for k, v in by_op.most_common(12)}}


def row(r: dict) -> str:
  """A BENCHMARKS.md table row."""
  def f(key, fmt):
    return format(r[key], fmt) if r.get(key) is not None else '-'
  return (f"| {r['model']} | {r['device']} x{r['devices']} | {r['remat']} | "
          f"{r['rows']}x{r['seq_len']} | {f('step_s', '.3f')} | {f('step_s_synced', '.3f')} | "
          f"{f('target_tokens_per_s', ',.0f')} | "
          f"{f('model_tflops_per_s', '.1f')} | {f('mfu', '.1%')} | {f('peak_gib', '.1f')} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='base,big', help='comma-separated: base, big')
  parser.add_argument('--tokens', type=int, default=25000, help='tokens per side per step')
  parser.add_argument('--seq_len', type=int, default=256, help='row length (packed rows)')
  parser.add_argument('--vocab_size', type=int, default=37000, help='shared BPE (paper EN-DE)')
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'),
                      help='compute dtype (parameters stay float32)')
  parser.add_argument('--remat', default='none', choices=('none', 'full', 'dots'))
  parser.add_argument('--attention_impl', default=None, choices=(None, 'xla', 'cudnn'))
  parser.add_argument('--loss_chunk_tokens', type=int, default=loss.CHUNK_TOKENS,
                      help='tokens per chunk of the fused output projection + loss; 0: the '
                           'whole batch at once (float32 [tokens, V] logits)')
  parser.add_argument('--flatten_optimizer', action='store_true',
                      help='Adam over one flat buffer of all parameters (optax.flatten)')
  parser.add_argument('--mesh', default='-1,1,1', help='data,fsdp,tensor')
  parser.add_argument('--steps', type=int, default=10,
                      help='steps per timed round: 3 rounds of back-to-back steps, the median '
                           'round reported (and the median of as many steps each waited for)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (0: none)')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='device peak TFLOP/s for MFU (0: by device kind)')
  parser.add_argument('--memory_only', action='store_true',
                      help='compile only and report XLA memory analysis (no device memory used)')
  parser.add_argument('--profile', default='',
                      help='trace 3 more steps into this folder and report device time by op')
  parser.add_argument('--out', default='', help='append JSON lines here')
  args = parser.parse_args()
  if args.steps < 1 or args.warmup < 0:
    parser.error(f'--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}')
  mesh = sharding.create_mesh(tuple(int(d) for d in args.mesh.split(',')))
  print('| model | device | remat | batch | step (s) | synced step (s) | target tok/s '
        '| model TFLOP/s | MFU | peak GiB/device |\n'
        '|---|---|---|---|---:|---:|---:|---:|---:|---:|', flush=True)
  for name in args.models.split(','):
    result = bench(name, args, mesh)
    print(row(result), flush=True)
    print(json.dumps(result), file=sys.stderr, flush=True)
    if args.out:
      with open(args.out, 'a', encoding='utf-8') as f:
        f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  main()
