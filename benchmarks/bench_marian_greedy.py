"""Greedy decoding of an imported Marian model against Transformers' generate(num_beams=1),
token for token, on a few hundred sentences (the suite's test_marian checks a few dozen).

Builds the tiny random MarianMTModel of tests/marian_models.py (no download), imports it,
decodes the held-out Bible verses (with padding: batches of mixed lengths, and a few
inputs of several verses joined) with both libraries and counts identical outputs.

  python benchmarks/bench_marian_greedy.py [--sentences 300] [--batch 32] [--max_new 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'tests'))

import marian_models  # noqa: E402
from transformer_jax import inference  # noqa: E402
from transformer_jax.interop import marian


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sentences', type=int, default=300)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--max_new', type=int, default=64)
  args = parser.parse_args()
  verses = marian_models.bible_lines('en', 'test', args.sentences)
  sentences = verses[:-10] + [' '.join(verses[i:i + 3]) for i in range(0, 30, 3)]  # long ones
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir, workdir = os.path.join(tmp, 'hf'), os.path.join(tmp, 'workdir')
    marian_models.build_marian_dir(hf_dir)
    marian.import_marian(hf_dir, workdir)
    model = inference.load_model(workdir)
    same, lengths, seconds = 0, [], {'transformers': 0.0, 'transformer_jax': 0.0}
    for start in range(0, len(sentences), args.batch):
      batch = sentences[start:start + args.batch]
      t = time.perf_counter()
      expected = marian_models.hf_greedy(hf_dir, batch, args.max_new)
      seconds['transformers'] += time.perf_counter() - t
      t = time.perf_counter()
      got = marian_models.ours_greedy(model.params, model.config, model.vocab, batch,
                                      args.max_new)
      seconds['transformer_jax'] += time.perf_counter() - t
      same += sum(a == b for a, b in zip(got, expected))
      lengths += [len(a) for a in got]
  print(f'{same} of {len(sentences)} greedy outputs identical token for token '
        f'({len(set(lengths))} distinct output lengths, {sum(n < args.max_new for n in lengths)}'
        f' ended by EOS); seconds incl. loading and compilation: '
        + ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()))


if __name__ == '__main__':
  main()
