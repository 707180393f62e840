"""Checkpoint cost for the base model's full train state (params + Adam moments).

Reports, on this machine: the synchronous save time, the asynchronous save's
blocking part (checksums + device->host copy: the training loop waits this long)
and its time to commit, the slowdown of training steps that overlap the
background write, and the (sharded) restore time.

  python benchmarks/bench_checkpoint.py [--vocab 37000] [--batch 8 --length 32] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from transformer_jax import checkpoint, sharding  # noqa: E402
from transformer_jax.training import synthetic, train_lib
from transformer_jax.training import optimizer as optimizer_lib
from transformer_jax.training import config as config_lib  # noqa: E402
from transformer_jax.model import count_params  # noqa: E402


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--vocab', type=int, default=37000, help='shared vocabulary size')
  parser.add_argument('--batch', type=int, default=8, help='rows per training step')
  parser.add_argument('--length', type=int, default=32, help='tokens per row')
  parser.add_argument('--steps', type=int, default=3, help='baseline steps to time')
  parser.add_argument('--dir', default=None, help='where to write (default: a temp dir)')
  args = parser.parse_args()

  config = config_lib.default_config()
  config.update(batch_size=args.batch, max_len=args.length, vocab_size=args.vocab)
  model_cfg = config_lib.model_config(config, args.vocab)
  optimizer, schedule = optimizer_lib.create_optimizer(config, model_cfg.d_model)
  mesh = sharding.create_mesh()
  state = train_lib.create_train_state(model_cfg, optimizer, mesh, seed=0)
  floats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  print(f'base model: {count_params(state.params) / 1e6:.1f}M params, train state '
        f'{floats / 1e6:.0f}M numbers ({floats * 4 / 2**20:.0f} MiB); devices {jax.devices()}')
  train_step = train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)
  batches = synthetic.synthetic_batches(args.batch, args.length, args.vocab)

  def step(state):
    state, metrics = train_step(state, sharding.shard_batch(next(batches), mesh))
    jax.block_until_ready(metrics)
    return state

  state = step(state)  # compile
  step_times = []
  for _ in range(args.steps):
    state, seconds = timed(step, state)
    step_times.append(seconds)
  baseline = statistics.median(step_times)
  print(f'train step (batch {args.batch}x{args.length}): {baseline:.3f} s (median of {args.steps})')

  workdir = args.dir or tempfile.mkdtemp(prefix='bench_checkpoint_')
  try:
    checkpoint.tree_checksums(state)  # compile the checksums once
    _, checksum_s = timed(checkpoint.tree_checksums, state)

    with checkpoint.Checkpointer(os.path.join(workdir, 'sync'), save_every_steps=1, keep=1,
                                 async_save=False) as ckpt:
      _, sync_s = timed(ckpt.maybe_save, 1, state, force=True)

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'async'), save_every_steps=1, keep=2)
    start = time.perf_counter()
    ckpt.maybe_save(1, state, force=True)
    blocking_s = time.perf_counter() - start
    overlapped = []
    while ckpt.is_saving():
      state, seconds = timed(step, state)
      overlapped.append(seconds)
    ckpt.wait()
    commit_s = time.perf_counter() - start
    ckpt.close()

    abstract = train_lib.abstract_train_state(model_cfg, optimizer, mesh)
    reader = checkpoint.Checkpointer(os.path.join(workdir, 'async'), save_every_steps=1, keep=2)
    restored, restore_s = timed(lambda: jax.block_until_ready(reader.restore(abstract)))
    reader.close()
    assert restored is not None
  finally:
    if args.dir is None:
      shutil.rmtree(workdir, ignore_errors=True)

  extra = sum(overlapped) - baseline * len(overlapped)
  print(f'checksums of the state:        {checksum_s:.2f} s')
  print(f'synchronous save:              {sync_s:.2f} s')
  print(f'async save, blocking part:     {blocking_s:.2f} s (checksums + device->host copy)')
  print(f'async save, until committed:   {commit_s:.2f} s')
  print(f'steps overlapping the write:   {len(overlapped)} '
        f'({", ".join(f"{s:.3f}" for s in overlapped)} s; +{extra:.2f} s in total)')
  print(f'training stall per async save: {blocking_s + max(extra, 0.0):.2f} s '
        '(blocking part + slowdown of overlapping steps)')
  print(f'restore (sharded, verified):   {restore_s:.2f} s')


if __name__ == '__main__':
  main()
