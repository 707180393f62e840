"""Loss parity of the step-efficiency options over a few hundred steps of a small model.

Trains the same small Transformer (same seed, same batches) on a learnable synthetic
task (the target is the reversed source) once per variant, and prints each variant's
loss curve against the reference's: the largest and the final gap, in per-token loss.
Variants: the reference (float32, the loss in 4 chunks), the unchunked loss, Adam over one
flat buffer, bfloat16 compute (a bf16 residual stream; layer-norm statistics stay float32),
and the reference from another seed (initialisation and dropout): the noise scale.

  python benchmarks/bench_parity.py [--steps 300] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_jax import TransformerConfig, sharding  # noqa: E402
from transformer_jax.training import config as config_lib, train_lib
from transformer_jax.training import optimizer as optimizer_lib

VOCAB, LENGTH, ROWS = 32, 16, 32
VARIANTS = {  # name -> (config changes, model changes)
    'reference': ({}, {}),
    'unchunked loss': ({'loss_chunk_tokens': 0}, {}),
    'flat Adam': ({'flatten_optimizer': True}, {}),
    'bf16 compute': ({}, {'dtype': 'bfloat16'}),
    'reference, seed 1 (the noise scale)': ({'seed': 1}, {}),
}


def reverse_batches(steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """[ROWS, LENGTH] batches: random ids >= 3 then EOS (1) and padding; targets reversed."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(steps):
    lengths = rng.integers(4, LENGTH, (ROWS, 1))
    ids = rng.integers(3, VOCAB, (ROWS, LENGTH))
    real = np.arange(LENGTH) < lengths
    inputs = np.where(real, ids, 0)
    targets = np.where(real, np.take_along_axis(ids, np.maximum(lengths - 1 - np.arange(LENGTH),
                                                                0), axis=1), 0)
    eos = np.arange(LENGTH) == lengths
    batches.append({'inputs': np.where(eos, 1, inputs).astype(np.int32),
                    'targets': np.where(eos, 1, targets).astype(np.int32)})
  return batches


def curve(config_changes: dict, model_changes: dict, batches: list, mesh) -> list[float]:
  """Per-token training loss of each step."""
  config = config_lib.default_config()
  config.update({'warmup_steps': 200, 'learning_rate_multiplier': 0.5,
                 'loss_chunk_tokens': ROWS * 4, **config_changes})
  dtype = {'bfloat16': jax.numpy.bfloat16}.get(model_changes.get('dtype'), jax.numpy.float32)
  model_cfg = TransformerConfig(vocab_size=VOCAB, d_model=64, d_ff=128, num_heads=4,
                                num_encoder_layers=2, num_decoder_layers=2, max_len=LENGTH,
                                dropout_rate=0.1, dtype=dtype)
  optimizer, schedule = optimizer_lib.create_optimizer(config, model_cfg.d_model)
  state = train_lib.create_train_state(model_cfg, optimizer, mesh, seed=config.seed)
  step = train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(metrics)
  return [float(m['loss'] / m['tokens']) for m in jax.device_get(losses)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--out', default='', help='append one JSON line per variant here')
  args = parser.parse_args()
  mesh = sharding.create_mesh((-1, 1, 1))
  batches = reverse_batches(args.steps)
  reference = None
  print('| variant | loss at step 1 | final loss (mean of last 20) | steps within 1e-4 '
        '| largest gap | final gap |\n|---|---:|---:|---:|---:|---:|')
  for name, (config_changes, model_changes) in VARIANTS.items():
    start = time.perf_counter()
    losses = np.array(curve(config_changes, model_changes, batches, mesh))
    reference = losses if reference is None else reference
    gap = np.abs(losses - reference)
    final = losses[-20:].mean()
    within = int(np.argmax(gap > 1e-4)) if np.any(gap > 1e-4) else len(gap)
    print(f'| {name} | {losses[0]:.4f} | {final:.4f} | {within} | {gap.max():.4f} | '
          f'{abs(final - reference[-20:].mean()):.4f} |', flush=True)
    if args.out:
      with open(args.out, 'a', encoding='utf-8') as f:
        f.write(json.dumps({'variant': name, 'seconds': time.perf_counter() - start,
                            'losses': losses.round(5).tolist()}) + '\n')


if __name__ == '__main__':
  main()
