"""tf.data input pipeline: parallel text → SentencePiece ids → packed or token-count batches.

Entry points
  * `get_datasets(config, workdir, process_index=None, process_count=None)`
      → `(tokenizer, train_iter, eval_ds, test_ds)`. `train_iter` is an infinite
      `TrainIterator`; `eval_ds` / `test_ds` are finite `tf.data.Dataset`s of
      `{'inputs', 'targets'}` int32 batches of shape [batch_size // process_count,
      max_eval_len] (iterate with `.as_numpy_iterator()`), each example exactly
      once across processes, all-zero rows/batches as padding so that every
      process runs the same number of eval steps.
  * Pairs come from the task's data hook (`read_pairs`, default `sources.raw_dataset`:
      text files, the embedded Bible, tfds).

Train batches (numpy int32, [rows, length], padding 0)
  * `batching='pack'`: keys `inputs`, `targets`, `inputs_position`,
    `targets_position`, `inputs_segmentation`, `targets_segmentation`; shape
    [batch_size // process_count, max_len]; segment ids start at 1 in each row;
    examples are packed in order within windows of `pack_window` examples.
  * `batching='tokens'`: keys `inputs`, `targets`; shape [rows, bucket_length]
    with rows = (tokens_per_batch // process_count) // bucket_length, so each side
    holds at most that many tokens (padding included). With `grad_accum_steps` k > 1
    the batches come in runs of k of one shape (the micro-batches of one step).

Resuming (`TrainIterator`)
  `next(it)` → batch dict; `it.save(prefix)` / `it.restore(prefix)` write / read a
  `tf.train.Checkpoint` of the tf.data iterator (files `<prefix>.index`,
  `<prefix>.data-*`); `it.get_state()` → bytes / `it.set_state(bytes)` carry the
  same checkpoint as one blob (for storing next to the model state). A restored
  iterator yields exactly the batches the saved one would have.

Multi-host
  Each process reads a disjoint shard (tfds: `tfds.even_splits`; text: line
  `shard`), so every training example is used once per epoch across processes.
  `batch_size` and `tokens_per_batch` are global and divided by `process_count`.

Config keys: `transformer_jax.training.config` (each key's default, rule and meaning).

Bad input raises `DataError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import os
import tarfile
import tempfile
import weakref
from typing import Callable, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from transformer_jax import tokenizer as tokenizer_lib
from transformer_jax.training import vocabulary
from transformer_jax.training.sources import DataError, iterate_pairs, raw_dataset
from transformer_jax.workdir import Workdir

AUTOTUNE = tf.data.AUTOTUNE
PACKED_KEYS = ('inputs', 'targets', 'inputs_position', 'targets_position',
               'inputs_segmentation', 'targets_segmentation')
SIDES = ('inputs', 'targets')
# (config, split, process_index, process_count) -> (source, target) string pairs: the
# task's data hook (`tasks.Task.read_pairs`; translation: `sources.raw_dataset`).
ReadPairs = Callable[..., tf.data.Dataset]
# Training pairs counted at start-up to log how many exceed max_len (exact below this).
TRAIN_LENGTH_SAMPLE = 200_000


# ---------------------------------------------------------------- vocabulary


def vocab_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The run's SentencePiece model (`Workdir.vocab_path`: config.vocab_path or spm.model)."""
  return Workdir(workdir).vocab_path(config.vocab_path)


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                  read_pairs: ReadPairs = raw_dataset,
                  symbols: Sequence[str] = ()) -> tokenizer_lib.Vocabulary:
  """The tokenizer at `vocab_path(config, workdir)`; trained there first (on both sides of
  the train split, `symbols` as single pieces: the task's `vocabulary_symbols`) if absent."""
  path = vocab_path(config, workdir)

  def sentences() -> Iterator[str]:
    for pair in iterate_pairs(read_pairs(config, 'train')):
      yield from pair

  return vocabulary.load_or_train(path, sentences(), config.vocab_size,
                                  config.vocab_model_type, config.vocab_max_sentences,
                                  config.seed, symbols)


def tokenize(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Vocabulary, chunk: int = 256,
             sampling: Optional[tokenizer_lib.Sampling] = None) -> tf.data.Dataset:
  """String pairs → {'inputs', 'targets'} int32 id vectors ending in EOS (order kept).

  With `sampling`, each sentence's segmentation is sampled anew every time it is read
  (subword regularisation, `vocabulary.tf_sampler`); else it is always the best one.
  Samples are reproducible: chunk c of `chunk` pairs (counted from the start of `pairs`,
  across epochs) samples with the key c, so the same pairs and seed give the same
  segmentations, and a restored iterator (whose position holds the count) goes on with
  those an uninterrupted one would have drawn.
  """
  def with_eos(ids: tf.RaggedTensor) -> tf.RaggedTensor:
    eos = tf.fill([ids.nrows(), 1], tf.constant(tokenizer_lib.EOS_ID, ids.dtype))
    return tf.concat([ids, eos], axis=1)

  if sampling is None:
    source, target = vocabulary.tf_encoders(tokenizer)
    chunks = pairs.batch(chunk).map(
        lambda s, t: {'inputs': with_eos(source(s)), 'targets': with_eos(target(t))},
        num_parallel_calls=AUTOTUNE)
  else:
    sample = vocabulary.tf_sampler(tokenizer, sampling)
    chunks = pairs.batch(chunk).enumerate().map(
        lambda key, pair: {'inputs': with_eos(sample(pair[0], key, False)),
                           'targets': with_eos(sample(pair[1], key, True))},
        num_parallel_calls=AUTOTUNE)
  return chunks.unbatch().map(lambda ex: ex)  # unbatched rows come typed as ragged rank 0


def _longest_side(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return tf.maximum(tf.size(example['inputs']), tf.size(example['targets']))


def filter_length(ds: tf.data.Dataset, max_len: int) -> tf.data.Dataset:
  """Drop examples with more than `max_len` tokens on either side."""
  return ds.filter(lambda ex: _longest_side(ex) <= max_len)


def count_too_long(ds: tf.data.Dataset, max_len: int) -> tuple[int, int]:
  """(examples, examples longer than max_len on a side) of a finite tokenised dataset."""
  total, too_long = ds.map(lambda ex: tf.cast(_longest_side(ex) > max_len, tf.int64)).reduce(
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
      lambda acc, long: (acc[0] + 1, acc[1] + long))
  return int(total), int(too_long)


def _log_too_long(ds: tf.data.Dataset, max_len: int, what: str,
                  limit: Optional[int] = None) -> int:
  """Log how many examples of `ds` (its first `limit`, if given) exceed `max_len`.

  Returns how many of the counted examples remain; DataError if none does (training
  would wait forever for a batch, evaluation would find nothing).
  """
  total, too_long = count_too_long(ds if limit is None else ds.take(limit), max_len)
  counted = f'the first {total}' if total == limit else str(total)
  if not total:
    raise DataError(f'{what}: no sentence pairs (empty split, or every pair has an empty side)')
  if total == too_long:
    raise DataError(f'{what}: all {counted} pairs are longer than {max_len} tokens')
  if too_long:
    logging.warning('%s: dropping %d of %s pairs longer than %d tokens', what, too_long, counted,
                    max_len)
  return total - too_long


# ------------------------------------------------------------------- packing


def _pack_window(window: dict[str, tf.RaggedTensor], length: int) -> dict[str, tf.Tensor]:
  """Greedily pack a window of examples (ragged [W, None] per side) into [rows, length].

  The rows are found one at a time (a loop over rows, not examples): a row starting at
  example s holds s .. e-1, e the first example whose running total exceeds `length` on
  either side (a binary search in the cumulative lengths). The tokens are then placed
  with one scatter per key.
  """
  lengths = {side: tf.cast(window[side].row_lengths(), tf.int32) for side in SIDES}
  ends = {side: tf.cumsum(lengths[side]) for side in SIDES}  # inclusive running totals
  count = tf.shape(lengths['inputs'])[0]

  def next_row(start, starts):
    end = tf.reduce_min([tf.searchsorted(ends[side], ends[side][start:start + 1]
                                         - lengths[side][start] + length, side='right')[0]
                         for side in SIDES])
    return tf.maximum(end, start + 1), starts.write(starts.size(), start)

  _, starts = tf.while_loop(lambda start, _: start < count, next_row,
                            (tf.constant(0), tf.TensorArray(tf.int32, size=0,
                                                            dynamic_size=True)))
  starts = starts.stack()  # first example of each row
  row = tf.cumsum(tf.scatter_nd(starts[:, None], tf.ones_like(starts), [count])) - 1
  first = tf.gather(starts, row)  # first example of each example's row
  shape = tf.stack([tf.size(starts), length])
  out = {}
  for side in SIDES:
    before = ends[side] - lengths[side]  # tokens before each example in the window
    example = window[side].value_rowids()
    position = tf.range(tf.size(example, tf.int32)) - tf.gather(before, example)
    column = tf.gather(before - tf.gather(before, first), example) + position
    place = functools.partial(tf.scatter_nd, tf.stack([tf.gather(row, example), column], 1),
                              shape=shape)
    out[side] = place(tf.cast(window[side].flat_values, tf.int32))
    out[f'{side}_position'] = place(position)
    out[f'{side}_segmentation'] = place(tf.gather(tf.range(count) - first + 1, example))
  return out


def pack(ds: tf.data.Dataset, length: int, window: int) -> tf.data.Dataset:
  """Greedily pack examples (each side ≤ length) into rows of `length` tokens per side.

  Examples are kept in order; a row is closed when the next example does not fit on
  either side, or at the end of a window of `window` examples: windows are packed
  independently and in parallel (order kept). Output: dicts with the six PACKED_KEYS,
  int32 [length].
  """
  return (ds.ragged_batch(window)
          .map(lambda w: _pack_window(w, length), num_parallel_calls=AUTOTUNE)
          .unbatch())


# ------------------------------------------------------------ token batching


def bucket_lengths(max_len: int, boundaries: Optional[Sequence[int]] = None) -> list[int]:
  """Sorted padded bucket lengths ≤ max_len, always ending with max_len.

  Default ladder: 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5×).
  """
  if not boundaries:
    ladder = (base * m for base in (2 ** k for k in range(3, 16)) for m in (1, 1.5))
    boundaries = [int(x) for x in ladder]
  return sorted({b for b in boundaries if b < max_len} | {max_len})


def batch_by_tokens(ds: tf.data.Dataset, tokens_per_batch: int,
                    lengths: list[int]) -> tf.data.Dataset:
  """Bucket examples by their longer side; batch [tokens_per_batch // L, L] per bucket length L.

  Every batch is padded to its bucket length, so only len(lengths) shapes occur
  and each side holds at most tokens_per_batch tokens, padding included.
  """
  if tokens_per_batch < max(lengths):
    raise DataError(f'tokens_per_batch={tokens_per_batch} is smaller than one sequence '
                    f'of {max(lengths)} tokens')
  return ds.bucket_by_sequence_length(
      element_length_func=_longest_side,
      bucket_boundaries=[n + 1 for n in lengths],  # bucket i: lengths < lengths[i] + 1
      bucket_batch_sizes=[tokens_per_batch // n for n in lengths] + [1],
      padded_shapes={side: [None] for side in SIDES},
      pad_to_bucket_boundary=True,
      drop_remainder=True)


# ------------------------------------------------------------------ datasets


def _per_process(value: int, process_count: int, name: str) -> int:
  if value % process_count:
    raise DataError(f'{name}={value} is not divisible by process_count={process_count}')
  return value // process_count


def train_dataset(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Vocabulary,
                  config: ml_collections.ConfigDict, process_count: int = 1) -> tf.data.Dataset:
  """Infinite shuffled train batches (see module docstring) from this process's pairs."""
  alpha = config.get('spm_alpha', 0.0)
  sampling = tokenizer_lib.Sampling(alpha, config.get('spm_nbest_size', -1),
                                    config.seed) if alpha > 0 else None
  tokens = filter_length(tokenize(pairs.shuffle(config.shuffle_buffer, seed=config.seed)
                                  .repeat(), tokenizer, sampling=sampling), config.max_len)
  if config.batching == 'pack':
    rows = _per_process(config.batch_size, process_count, 'batch_size')
    batches = pack(tokens, config.max_len, config.pack_window).batch(rows, drop_remainder=True)
  elif config.batching == 'tokens':
    budget = _per_process(config.tokens_per_batch, process_count, 'tokens_per_batch')
    batches = batch_by_tokens(tokens, budget,
                              bucket_lengths(config.max_len, config.get('bucket_boundaries')))
    accum = config.get('grad_accum_steps', 1)
    if accum > 1:  # a step's micro-batches are stacked: they must share one bucket shape
      batches = batches.group_by_window(
          key_func=lambda batch: tf.cast(tf.shape(batch['inputs'])[1], tf.int64),
          reduce_func=lambda _, window: window.batch(accum, drop_remainder=True),
          window_size=accum).unbatch()
  else:
    raise DataError(f'unknown batching {config.batching!r}; expected pack or tokens')
  return batches.prefetch(AUTOTUNE)


def eval_dataset(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Vocabulary, max_len: int,
                 batch_size: int, process_index: int = 0, process_count: int = 1,
                 what: str = 'eval') -> tf.data.Dataset:
  """Finite, ordered eval batches of this process's shard of ALL `pairs`.

  Batches are {'inputs', 'targets'} int32 [batch_size // process_count, max_len];
  the last real batch is completed with all-zero rows, then all-zero batches are
  appended so that every process yields the same number of batches.
  """
  rows = _per_process(batch_size, process_count, 'batch_size')
  tokens = tokenize(pairs, tokenizer)
  kept = _log_too_long(tokens, max_len, what)
  steps = math.ceil(math.ceil(kept / process_count) / rows)
  zeros = {side: tf.zeros([rows, max_len], tf.int32) for side in SIDES}
  pad_rows = lambda batch: {k: tf.pad(v, [[0, rows - tf.shape(v)[0]], [0, 0]])
                            for k, v in batch.items()}
  batches = (filter_length(tokens, max_len)
             .shard(process_count, process_index)
             .padded_batch(rows, padded_shapes={side: [max_len] for side in SIDES})
             .map(pad_rows))
  return (batches.concatenate(tf.data.Dataset.from_tensors(zeros).repeat())
          .take(steps).cache().prefetch(AUTOTUNE))


class TrainIterator:
  """Infinite iterator of numpy train batches whose position can be saved and restored."""

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    # The pipeline's threads must stop before the interpreter does: one running Python
    # (sampled segmentations) then aborts the process ("terminate called ...").
    atexit.register(lambda ref: ref() and ref().close(), weakref.ref(self))

  def close(self) -> None:
    """Stop the pipeline's threads; the iterator cannot be used afterwards."""
    self._iterator = self._checkpoint = None

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def save(self, prefix: str) -> str:
    """Write the iterator state to files `<prefix>.*`; returns the checkpoint path."""
    return self._checkpoint.write(prefix)

  def restore(self, prefix: str) -> None:
    """Continue from the state saved at `prefix`."""
    self._checkpoint.read(prefix).assert_consumed()

  def get_state(self) -> bytes:
    """The iterator state as one blob (a tar of the checkpoint files)."""
    with tempfile.TemporaryDirectory() as tmp:
      self.save(os.path.join(tmp, 'iterator'))
      blob = io.BytesIO()
      with tarfile.open(fileobj=blob, mode='w') as tar:
        for name in sorted(os.listdir(tmp)):
          tar.add(os.path.join(tmp, name), arcname=name)
      return blob.getvalue()

  def set_state(self, state: bytes) -> None:
    """Continue from a blob returned by `get_state`."""
    with tempfile.TemporaryDirectory() as tmp:
      with tarfile.open(fileobj=io.BytesIO(state), mode='r') as tar:
        tar.extractall(tmp, filter='data')
      self.restore(os.path.join(tmp, 'iterator'))


def get_datasets(config: ml_collections.ConfigDict, workdir: str,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 read_pairs: ReadPairs = raw_dataset, symbols: Sequence[str] = ()
                 ) -> tuple[tokenizer_lib.Vocabulary, TrainIterator, tf.data.Dataset,
                            tf.data.Dataset]:
  """(tokenizer, train iterator, eval batches, test batches) for this process, of the pairs
  `read_pairs` gives (the task's data hook); a new vocabulary holds `symbols` as single
  pieces."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count > 1 and config.batching == 'tokens':
    # Each host would pick its own bucket shape per step; the global batch needs one.
    raise DataError("batching='tokens' runs on one host only: use batching='pack' with "
                    f'{count} processes')
  tokenizer = get_tokenizer(config, workdir, read_pairs, symbols)
  train_pairs = read_pairs(config, 'train', index, count)
  _log_too_long(tokenize(train_pairs, tokenizer), config.max_len, f'train (process {index})',
                limit=TRAIN_LENGTH_SAMPLE)
  train_iter = TrainIterator(train_dataset(train_pairs, tokenizer, config, count))
  eval_ds, test_ds = (
      eval_dataset(read_pairs(config, split), tokenizer, config.max_eval_len,
                   config.batch_size, index, count, split)
      for split in ('eval', 'test'))
  return tokenizer, train_iter, eval_ds, test_ds
