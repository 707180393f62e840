"""Sampling against greedy decoding: the cost of one decoding step, on one warm batch.

Decodes the first `--batch` lines of `--input` with the model of `--workdir`, greedy and
by sampling (plain, and with a nucleus), each after one warm-up (compilation), best of
`--repeats`; prints seconds, decoding steps (the longest output), ms a step and
sentences/s. The translate CLI's end-to-end numbers are in BENCHMARKS.md.

  python benchmarks/bench_sampling.py --workdir workdir_demo --input test.en
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from transformer_jax import decoding, hypotheses, inference


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--input', required=True, help='one sentence a line')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  model = inference.load_model(args.workdir)
  with open(args.input, encoding='utf-8') as f:
    lines = f.read().splitlines()[:args.batch]
  sources = inference.encode_lines(lines, model.vocab, model.max_len)
  (_, (inputs,)), = inference.length_batches({i: (ids,) for i, ids in sources.items()},
                                             args.batch, model.max_len, progress=False)
  for name, search in [('greedy', decoding.Search(beam_size=1)),
                       ('sample', decoding.Search(sample=True)),
                       ('sample, top_p 0.9', decoding.Search(sample=True, top_p=0.9))]:
    search_fn = hypotheses.make_search_fn(model, hypotheses.SearchOptions(search))
    search_fn(inputs, 0)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      tokens = search_fn(inputs, 0)[0]
      times.append(time.perf_counter() - start)
    steps = int(np.max(np.sum(tokens != 0, axis=-1)))
    best = min(times)
    print(f'{name:18s} {best:6.2f} s  {steps:4d} steps  {1000 * best / steps:6.2f} ms/step  '
          f'{args.batch / best:6.1f} sentences/s')


if __name__ == '__main__':
  main()
