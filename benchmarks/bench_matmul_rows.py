"""XLA:CPU matmul rate against the number of rows: why small-batch decoding is weight-bound.

A jitted loop of 12 dependent x·W products per iteration (W: 512 x 2048 float32, 48 MB in
all, beyond a 32 MB L3), 20 iterations, for each row count, three ways: kernels stored
[in, out] (x @ W), kernels stored [out, in] (x @ Wᵀ, XLA's own choice of layouts), and
`transformer_jax.linear.project` (the model's path: [out, in] kernels, weights-major
Wᵀ-first product up to the backend policy's `weights_major_max_rows` rows on CPU). Prints GFLOP/s and the rate
at which the kernels are streamed. No peers, no TensorFlow.

  python benchmarks/bench_matmul_rows.py [--rows 8,32,128,512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.linear import project

K, N, LAYERS, ITERATIONS = 512, 2048, 12, 20

PRODUCTS = {  # layout name -> (kernel is [out, in], x [M, K] · w -> [M, N])
    '[in, out]': (False, lambda x, w: x @ w),
    '[out, in]': (True, lambda x, w: jnp.einsum('mk,nk->mn', x, w)),
    '[out, in], linear.project': (True, project),
}


def loop(product):
  """A jitted function: (kernels, x [M, K]) -> x after ITERATIONS x LAYERS products."""
  def run(kernels, x):
    def body(_, x):
      for w in kernels:
        x = jnp.tanh(product(x, w)[:, :K])
      return x
    return jax.lax.fori_loop(0, ITERATIONS, body, x)
  return jax.jit(run)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', default='8,32,128,512')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  in_out = [rng.normal(0, 0.02, (K, N)).astype(np.float32) for _ in range(LAYERS)]
  kernels = {False: [jnp.asarray(w) for w in in_out], True: [jnp.asarray(w.T) for w in in_out]}
  print('| rows | kernel layout | best ms | GFLOP/s | kernel GB/s |')
  print('|---:|---|---:|---:|---:|')
  for rows in (int(r) for r in args.rows.split(',')):
    x = jnp.asarray(rng.normal(size=(rows, K)).astype(np.float32))
    for layout, (outputs_first, product) in PRODUCTS.items():
      fn, ws = loop(product), kernels[outputs_first]
      fn(ws, x).block_until_ready()
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        fn(ws, x).block_until_ready()
        times.append(time.perf_counter() - start)
      best = min(times)
      flops = 2 * rows * K * N * LAYERS * ITERATIONS
      streamed = K * N * 4 * LAYERS * ITERATIONS
      print(f'| {rows} | {layout} | {best * 1e3:.1f} | {flops / best / 1e9:.1f} | '
            f'{streamed / best / 1e9:.1f} |', flush=True)


if __name__ == '__main__':
  main()
