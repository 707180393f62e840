"""What tracing the train step under the mesh changes: collectives, memory and FLOPs.

Compiles (does not run) `train_lib.make_train_step` on 8 virtual CPU devices for
several meshes, traced two ways: under `sharding.use_mesh(mesh)` (what training does:
the model's logical activation constraints apply) and under the axis rules alone (the
constraints are no-ops and XLA propagates shardings from the parameters and the
batch). Reports, per device, XLA's collectives in the optimized HLO, its temporary
memory and its FLOP count. Compile-only, so the result does not depend on machine load.

  python benchmarks/bench_sharding.py [--meshes 1,8,1 2,2,2 1,1,8]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

os.environ['JAX_NUM_CPU_DEVICES'] = '8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_mfu import GIB, RECIPE, synthetic_batch  # noqa: E402
from transformer_jax import TransformerConfig, sharding  # noqa: E402
from transformer_jax.training import optimizer as optimizer_lib, train_lib

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute', 'all-to-all')


def analyse(cfg: TransformerConfig, mesh: jax.sharding.Mesh, rows: int, length: int,
            under_mesh: bool) -> dict:
  """Compile the step for `mesh`, traced under the mesh or the rules alone."""
  optimizer, schedule = optimizer_lib.create_optimizer(RECIPE, cfg.d_model)
  step = train_lib.make_train_step(cfg, RECIPE, mesh, optimizer, schedule).__wrapped__
  abstract = train_lib.abstract_train_state(cfg, optimizer, mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
           for k, v in synthetic_batch(rows, length, cfg.vocab_size).items()}
  context = sharding.use_mesh(mesh) if under_mesh else sharding.axis_rules()
  with context:
    compiled = step.lower(abstract, batch).compile()
  text = compiled.as_text()
  counts = collections.Counter()
  for op in COLLECTIVES:  # async pairs count once, by their -start op
    counts[op] = len(re.findall(rf'= \S+ {op}(?:-start)?\(', text))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'collectives': ', '.join(f'{n} {op}' for op, n in counts.items() if n) or 'none',
          'temp_mib': compiled.memory_analysis().temp_size_in_bytes / GIB * 1024,
          'gflop': float(cost.get('flops', float('nan'))) / 1e9}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--meshes', nargs='+', default=['1,8,1', '2,2,2', '1,1,8'])
  parser.add_argument('--rows', type=int, default=64)
  parser.add_argument('--length', type=int, default=64)
  args = parser.parse_args()
  cfg = TransformerConfig(vocab_size=1024, d_model=128, d_ff=512, num_heads=8,
                          num_encoder_layers=2, num_decoder_layers=2, dtype=jnp.bfloat16)
  print('| mesh (data, fsdp, tensor) | tracing | collectives in the step '
        '| temporaries / device | GFLOP / device |\n|---|---|---|---:|---:|')
  for spec in args.meshes:
    shape = tuple(int(d) for d in spec.split(','))
    mesh = sharding.create_mesh(shape)
    for under_mesh in (False, True):
      r = analyse(cfg, mesh, args.rows, args.length, under_mesh)
      label = '`use_mesh` (training)' if under_mesh else 'rules only'
      print(f"| {shape} | {label} | {r['collectives']} | {r['temp_mib']:.1f} MiB "
            f"| {r['gflop']:.2f} |", flush=True)


if __name__ == '__main__':
  main()
