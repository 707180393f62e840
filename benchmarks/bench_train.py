"""Training throughput (real target tokens/s) of the JAX train step vs `torch.nn.Transformer`.

Same dims, shared tied embeddings, label smoothing 0.1, Adam, dropout 0.1, the same
synthetic [batch, length] batches (random tails padded), torch on `--threads` threads.
Rounds alternate JAX and torch so that load from other processes hits both alike;
the median step time per system is reported. No TensorFlow.

  python benchmarks/bench_train.py --sizes tiny,base --batch 32 --length 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from transformer_jax import TransformerConfig, sharding
from transformer_jax.training import synthetic, train_lib
from transformer_jax.training import optimizer as optimizer_lib
from transformer_jax.training import config as config_lib

SIZES = {  # (vocab, d_model, heads, layers, d_ff)
    'tiny': (8000, 256, 4, 2, 1024),
    'demo': (8000, 256, 4, 3, 1024),
    'base': (37000, 512, 8, 6, 2048),
}


def jax_runner(size: str, dtype: str, pre_norm: bool):
  vocab, d_model, heads, layers, d_ff = SIZES[size]
  config = config_lib.default_config()
  model_cfg = TransformerConfig(vocab_size=vocab, d_model=d_model, num_heads=heads,
                                num_encoder_layers=layers, num_decoder_layers=layers,
                                d_ff=d_ff, pre_norm=pre_norm, dtype=jax.numpy.dtype(dtype))
  mesh = sharding.create_mesh((-1, 1, 1))
  optimizer, schedule = optimizer_lib.create_optimizer(config, d_model)
  state = train_lib.create_train_state(model_cfg, optimizer, mesh, 0)
  step = train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)
  holder = {'state': state}

  def run(batch):
    holder['state'], metrics = step(holder['state'], sharding.shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
  return run


def torch_runner(size: str, threads: int, pre_norm: bool):
  import torch
  import torch_peer
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  vocab, d_model, heads, layers, d_ff = SIZES[size]
  model = torch_peer.TorchTransformer(vocab, d_model, heads, layers, d_ff, 0.1, pre_norm)
  opt, sched = torch_peer.make_optimizer(model, d_model, 4000, 1.0)

  def run(batch):
    torch_peer.train_step(model, opt, sched, torch.from_numpy(batch['inputs']).long(),
                          torch.from_numpy(batch['targets']).long())
  return run


def time_steps(run, batches, warmup: int) -> list[float]:
  for batch in batches[:warmup]:
    run(batch)
  times = []
  for batch in batches[warmup:]:
    start = time.perf_counter()
    run(batch)
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='tiny,base')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--dtypes', default='float32,bfloat16', help='JAX compute dtypes')
  parser.add_argument('--pre_norm', type=int, default=0)
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'train_throughput.jsonl'))
  args = parser.parse_args()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  for size in args.sizes.split(','):
    vocab = SIZES[size][0]
    gen = synthetic.synthetic_batches(args.batch, args.length, vocab, seed=0)
    batches = [next(gen) for _ in range(args.steps + 2)]
    tokens = float(np.mean([np.sum(b['targets'] > 0) for b in batches]))
    runners = {f'jax-{d}': jax_runner(size, d, bool(args.pre_norm))
               for d in args.dtypes.split(',')}
    runners['torch'] = torch_runner(size, args.threads, bool(args.pre_norm))
    times = {name: [] for name in runners}
    for round_index in range(args.rounds):
      for name, run in runners.items():
        times[name] += time_steps(run, batches, warmup=2 if round_index == 0 else 0)
    torch_rate = tokens / statistics.median(times['torch'])
    for name, samples in times.items():
      rate = tokens / statistics.median(samples)
      record = {'size': size, 'system': name, 'batch': args.batch, 'length': args.length,
                'target_tokens_per_step': tokens, 'median_step_s': statistics.median(samples),
                'target_tokens_per_s': rate, 'vs_torch': rate / torch_rate,
                'threads': args.threads, 'pre_norm': bool(args.pre_norm),
                'load_avg_1m': os.getloadavg()[0], 'steps': len(samples)}
      print(json.dumps(record), flush=True)
      with open(args.out, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  main()
