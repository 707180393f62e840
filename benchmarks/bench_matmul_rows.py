"""XLA:CPU matmul rate against the number of rows: why small-batch decoding is weight-bound.

A jitted loop of 12 dependent x·W products per iteration (W: 512 x 2048 float32, 48 MB in
all, beyond a 32 MB L3), 20 iterations, for each row count; kernels stored [in, out]
(as the model stores them) and [out, in]. Prints GFLOP/s and the rate at which the
kernels are streamed. No peers, no TensorFlow.

  python benchmarks/bench_matmul_rows.py [--rows 8,32,128,512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

K, N, LAYERS, ITERATIONS = 512, 2048, 12, 20


def loop(kernels: jax.Array, outputs_first: bool):
  """A jitted function: x [M, K] -> x after ITERATIONS x LAYERS products with `kernels`."""
  def body(_, x):
    for layer in range(LAYERS):
      w = kernels[layer]
      y = jnp.einsum('mk,nk->mn', x, w) if outputs_first else x @ w
      x = jnp.tanh(y[:, :K])
    return x
  return jax.jit(lambda x: jax.lax.fori_loop(0, ITERATIONS, body, x))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', default='8,32,128,512')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  in_out = jnp.asarray(rng.normal(0, 0.02, (LAYERS, K, N)).astype(np.float32))
  out_in = jnp.asarray(np.swapaxes(np.asarray(in_out), 1, 2).copy())
  print('| rows | kernel layout | best ms | GFLOP/s | kernel GB/s |')
  print('|---:|---|---:|---:|---:|')
  for rows in (int(r) for r in args.rows.split(',')):
    x = jnp.asarray(rng.normal(size=(rows, K)).astype(np.float32))
    for outputs_first, kernels in ((False, in_out), (True, out_in)):
      fn = loop(kernels, outputs_first)
      fn(x).block_until_ready()
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
      best = min(times)
      flops = 2 * rows * K * N * LAYERS * ITERATIONS
      streamed = K * N * 4 * LAYERS * ITERATIONS
      layout = '[out, in]' if outputs_first else '[in, out]'
      print(f'| {rows} | {layout} | {best * 1e3:.1f} | {flops / best / 1e9:.1f} | '
            f'{streamed / best / 1e9:.1f} |', flush=True)


if __name__ == '__main__':
  main()
