"""Input-pipeline throughput on the embedded Bible corpus: packing vs token batching.

Reports real (non-padding) tokens per second, source + target, as the training
loop would receive them (numpy batches from `TrainIterator`), after a warm-up, with
the cores this process may use and the load average (the rate per core is what
scales to a bigger host: compare `taskset -c 0` with `taskset -c 0,1`).

  python benchmarks/bench_input_pipeline.py [--vocab_size 8000] [--batches 300]
  taskset -c 0 python benchmarks/bench_input_pipeline.py --batching pack
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from transformer_jax.training import input_pipeline  # noqa: E402


def bible_config(vocab_size: int, batching: str) -> ml_collections.ConfigDict:
  """A paper-like config on the embedded corpus (max_len 128, ~4k tokens or 64 rows a batch)."""
  return ml_collections.ConfigDict(dict(
      dataset='bible', tfds_name=None, tfds_data_dir=None, train_split='train',
      eval_split='dev', test_split='test', source_lang='en', target_lang='es',
      train_source=None, train_target=None, eval_source=None, eval_target=None,
      test_source=None, test_target=None, vocab_path=None, vocab_size=vocab_size,
      vocab_model_type='unigram', vocab_max_sentences=1_000_000, max_len=128, max_eval_len=256,
      batching=batching, batch_size=64, tokens_per_batch=4096, bucket_boundaries=None,
      shuffle_buffer=10_000, seed=0))


def tokens_per_second(train_iter: input_pipeline.TrainIterator, batches: int,
                      warmup: int = 20) -> tuple[float, float, float]:
  """(real tokens per second, per CPU-second of this process, padded-shape fill fraction)
  over `batches` batches after `warmup`. The CPU time counts every thread of the
  process, so tokens per CPU-second is the rate of one busy core even on a loaded host."""
  for _ in range(warmup):
    next(train_iter)
  real = padded = 0
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(train_iter)
    real += int(np.count_nonzero(batch['inputs']) + np.count_nonzero(batch['targets']))
    padded += batch['inputs'].size + batch['targets'].size
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  return real / wall, real / cpu, real / padded


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--batches', type=int, default=300)
  parser.add_argument('--batching', default='pack,tokens', help='comma-separated: pack, tokens')
  parser.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'bench_input'))
  args = parser.parse_args()
  cores = len(os.sched_getaffinity(0))
  for batching in args.batching.split(','):
    config = bible_config(args.vocab_size, batching)
    _, train_iter, _, _ = input_pipeline.get_datasets(config, args.workdir, 0, 1)
    rate, per_cpu, fill = tokens_per_second(train_iter, args.batches)
    print(f'{batching:>6}: {rate / 1e3:8.1f}k real tokens/s (source+target) on {cores} '
          f'core(s), {per_cpu / 1e3:.1f}k per CPU-second, {100 * fill:.0f}% of the batch '
          f'shape is real tokens; load average {os.getloadavg()[0]:.1f}', flush=True)


if __name__ == '__main__':
  main()
