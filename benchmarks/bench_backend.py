"""What each backend-specific choice (`transformer_jax.backend`) earns on this CPU.

Every variant runs in a process of its own and the variants take turns run by run (as
`bench_decode.py` does), on three workloads: beam search at the paper's base dimensions
(vocabulary 32,000, batch 8 x 32 source tokens, beam 4, 64 output tokens forced), greedy
decoding of the same batch, and a training step of the demo's model (d_model 192, 3+3
pre-LN layers, vocabulary 8,000, 16 packed rows of 128 tokens). Variants:

  default                the policy as it stands
  no_weights_major       `linear.project` always the plain dot
  no_chunked_top_k       beam search's top-k by `lax.top_k` over the whole vocabulary
  no_heads_major_values  attention's value product asked for [B, Q, N, H] directly
  plain                  every choice off (what another backend gets)
  tree:PATH              the library as checked out at PATH (e.g. an older commit)

  python benchmarks/bench_backend.py --variants default,plain --workloads beam,train
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SOURCE_LEN, OUTPUT_LEN, BEAM, VOCAB, BATCH = 32, 64, 4, 32000, 8
POLICIES = {'default': None, 'no_weights_major': {'weights_major_max_rows': 0},
            'no_chunked_top_k': {'chunked_top_k': False},
            'no_heads_major_values': {'heads_major_values': False},
            'plain': {'weights_major_max_rows': 0, 'chunked_top_k': False,
                      'heads_major_values': False}}


def _decoder(dtype=None):
  """(decode(inputs, beam) -> tokens, inputs) of a random base model, for either API."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from transformer_jax import Transformer, TransformerConfig
  config = TransformerConfig.base(VOCAB, dropout_rate=0.0, max_len=256)
  ones = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda key: nn.meta.unbox(Transformer(config).init(key, ones, ones)[
      'params']))(jax.random.key(0))
  inputs = jnp.asarray(np.random.default_rng(0).integers(3, VOCAB - 1, (BATCH, SOURCE_LEN)),
                       jnp.int32)
  kw = dict(max_extra_len=OUTPUT_LEN - SOURCE_LEN, max_decode_len=OUTPUT_LEN,
            min_len=OUTPUT_LEN)
  try:
    from transformer_jax import decoding
  except ImportError:  # an older tree: decode.beam_search(params, config, ...)
    from transformer_jax import decode

    def run(beam):
      if beam == 1:
        return decode.greedy_decode(params, config, inputs, **kw)[0]
      return decode.beam_search(params, config, inputs, beam_size=beam, **kw)[0]
    return run
  model = decoding.Model(params, config)

  def run(beam):
    if beam == 1:
      return decoding.greedy(model, inputs, **kw).best
    return decoding.beam_search(model, inputs, beam_size=beam, **kw).best
  return run


def _trainer():
  """A jitted training step of the demo's model on one fixed packed batch."""
  import jax
  from transformer_jax import TransformerConfig, sharding
  try:
    from transformer_jax.training import config as config_lib, synthetic, train_lib
    from transformer_jax.training.optimizer import create_optimizer
  except ImportError:  # an older tree
    from transformer_jax import config as config_lib, synthetic, train_lib
    create_optimizer = train_lib.create_optimizer
  config = config_lib.default_config()
  config.warmup_steps = 150
  model_cfg = TransformerConfig(vocab_size=8000, d_model=192, d_ff=768, num_heads=4,
                                num_encoder_layers=3, num_decoder_layers=3, pre_norm=True,
                                dropout_rate=0.0, max_len=256)
  mesh = sharding.create_mesh((-1, 1, 1))
  optimizer, schedule = create_optimizer(config, model_cfg.d_model)
  state = {'state': train_lib.create_train_state(model_cfg, optimizer, mesh, 0)}
  step = train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)
  batch = next(iter(synthetic.synthetic_batches(16, 128, 8000, seed=0)))

  def run():
    state['state'], metrics = step(state['state'], sharding.shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
  return run


def worker(variant: str, workload: str) -> None:
  """Child: set up, print 'ready', then time one run per line read from stdin."""
  if POLICIES.get(variant):
    from transformer_jax import backend
    backend.POLICIES['cpu'] = backend.Policy(**{**backend.POLICIES['cpu'].__dict__,
                                                **POLICIES[variant]})
  import jax
  if workload == 'train':
    run = _trainer()
  else:
    decode = _decoder()
    beam = BEAM if workload == 'beam' else 1
    run = lambda: jax.block_until_ready(decode(beam))  # noqa: E731
  run()  # compile
  print('ready', flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    run()
    print(json.dumps(time.perf_counter() - start), flush=True)


def start(variant: str, workload: str) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if variant.startswith('tree:'):
    env['PYTHONPATH'] = variant[len('tree:'):]
  child = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--worker',
                            f'{variant}@{workload}'], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
  if child.stdout.readline().strip() != 'ready':
    raise RuntimeError(f'{variant} {workload}: the worker failed (its error is above)')
  return child


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default='default,no_weights_major,no_chunked_top_k,'
                      'no_heads_major_values,plain')
  parser.add_argument('--workloads', default='beam,greedy,train')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(*args.worker.split('@'))
    return
  variants = args.variants.split(',')
  for workload in args.workloads.split(','):
    children = {v: start(v, workload) for v in variants}
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
      for variant, child in children.items():  # turns: load hits every variant alike
        time.sleep(0.5)
        child.stdin.write('run\n')
        child.stdin.flush()
        times[variant].append(json.loads(child.stdout.readline()))
    for child in children.values():
      child.stdin.close()
      child.wait()
    base = statistics.median(times[variants[0]])
    print(f'\n{workload}: median s (best), vs {variants[0]}')
    for variant in variants:
      median = statistics.median(times[variant])
      print(f'  {variant:24s} {median:7.3f} ({min(times[variant]):.3f})  {median / base:5.2f}x',
            flush=True)


if __name__ == '__main__':
  main()
