"""tf.data input pipeline: parallel text → SentencePiece ids → packed or token-count batches.

Entry points
  * `get_datasets(config, workdir, process_index=None, process_count=None)`
      → `(tokenizer, train_iter, eval_ds, test_ds)`. `train_iter` is an infinite
      `TrainIterator`; `eval_ds` / `test_ds` are finite `tf.data.Dataset`s of
      `{'inputs', 'targets'}` int32 batches of shape [batch_size // process_count,
      max_eval_len] (iterate with `.as_numpy_iterator()`), each example exactly
      once across processes, all-zero rows/batches as padding so that every
      process runs the same number of eval steps.
  * `load_raw(config, split)` → all `(source, target)` string pairs of a split
      ('train' | 'eval' | 'test'), e.g. for BLEU.

Train batches (numpy int32, [rows, length], padding 0)
  * `batching='pack'`: keys `inputs`, `targets`, `inputs_position`,
    `targets_position`, `inputs_segmentation`, `targets_segmentation`; shape
    [batch_size // process_count, max_len]; segment ids start at 1 in each row.
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

Config keys (`ml_collections.ConfigDict`)
  dataset            'bible' (embedded English↔Spanish corpus) | 'tfds' | 'text'.
  tfds_name          e.g. 'wmt14_translate/de-en', 'wmt14_translate/fr-en'.
  tfds_data_dir      tfds data_dir ('' or None: tfds default); must be prepared.
  train_split, eval_split, test_split
                     split names for 'tfds' (e.g. 'train', 'validation', 'test';
                     slicing like 'train[:1%]' works) and 'bible' ('train',
                     'dev' (alias 'validation'), 'test'). Unused by 'text'.
  source_lang, target_lang
                     feature names of the pair: 'en'/'de'/'fr' for WMT, 'en'/'es'
                     for the Bible (either direction).
  train_source, train_target, eval_source, eval_target, test_source, test_target
                     'text' paths, one sentence a line (`.gz` is decompressed).
                     For a TSV file (source<TAB>target) give its path as
                     `*_source` and leave `*_target` empty (None or '').
  vocab_path         SentencePiece model ('' or None: '<workdir>/spm.model'); trained on
                     the train split (both sides) when absent.
  vocab_size, vocab_model_type ('unigram' | 'bpe'), vocab_max_sentences
                     SentencePiece training: pieces, algorithm, sentences sampled.
  max_len            train: max tokens per side incl. EOS (longer pairs dropped and
                     counted in the log, over the first TRAIN_LENGTH_SAMPLE pairs);
                     also the packed row length.
  max_eval_len       eval/test: max tokens per side (longer pairs dropped, counted
                     in the log) and the padded length.
  batching           'pack' | 'tokens'.
  batch_size         global sequences per batch (packed rows; eval/test batches).
  tokens_per_batch   global tokens per side per batch ('tokens' batching).
  bucket_boundaries  padded lengths of the token-batching buckets (empty/None: a
                     geometric ladder from 8; max_len is always added).
  grad_accum_steps   micro-batches per optimizer step (optional, default 1).
  shuffle_buffer     pairs in the shuffle buffer.
  seed               shuffle seed (and SentencePiece sampling seed).
  spm_alpha, spm_nbest_size
                     subword regularisation of the TRAIN split only (0: off): each
                     pass samples a segmentation (unigram: among the nbest_size best,
                     -1 all, inverse temperature alpha; BPE: dropout alpha). Eval,
                     test and decoding always use the best segmentation.

Bad input raises `DataError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import logging
import math
import os
import re
import tarfile
import tempfile
import zlib
from typing import Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from transformer_jax import tokenizer as tokenizer_lib

AUTOTUNE = tf.data.AUTOTUNE
BIBLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'bible')
BIBLE_LANGS = ('en', 'es')
_BIBLE_SPLIT_ALIASES = {'validation': 'dev'}
SPLITS = ('train', 'eval', 'test')
PACKED_KEYS = ('inputs', 'targets', 'inputs_position', 'targets_position',
               'inputs_segmentation', 'targets_segmentation')
SIDES = ('inputs', 'targets')
# Training pairs counted at start-up to log how many exceed max_len (exact below this).
TRAIN_LENGTH_SAMPLE = 200_000


class DataError(ValueError):
  """Unusable input data or data configuration (one-line message)."""


# ---------------------------------------------------------------- text files


def _read_lines(path: str) -> Iterator[str]:
  """Lines of a UTF-8 text file (gzip if `.gz`), without line ends; DataError on bad input."""
  if not tf.io.gfile.exists(path):
    raise DataError(f'{path}: file not found')
  if tf.io.gfile.isdir(path):
    raise DataError(f'{path}: is a directory, not a text file')
  with tf.io.gfile.GFile(path, 'rb') as raw:
    stream = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw
    try:
      for number, line in enumerate(stream, start=1):
        try:
          yield line.decode('utf-8').rstrip('\r\n')
        except UnicodeDecodeError as e:
          raise DataError(f'{path}:{number}: not UTF-8 ({e.reason} at byte {e.start})') from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
      raise DataError(f'{path}: not a valid gzip file ({e})') from None


@functools.lru_cache(maxsize=None)
def check_parallel_text(source: str, target: Optional[str]) -> int:
  """Validate a source/target file pair (or a TSV when `target` is empty).

  Returns the number of usable pairs; logs how many have an empty side (those
  are skipped by the pipeline). Raises DataError on a missing file, a directory, a
  broken `.gz`, non-UTF-8 bytes, different line counts or a TSV line without a TAB.
  Cached: each file pair is read once per process.
  """
  if target:
    pairs = itertools.zip_longest(_read_lines(source), _read_lines(target))
  else:
    pairs = (_split_tsv_line(line, source, n) for n, line in enumerate(_read_lines(source), 1))
  total = empty = 0
  for src, tgt in pairs:
    if src is None or tgt is None:
      counts = (_count_lines(source), _count_lines(target))
      raise DataError(f'line counts differ: {source} has {counts[0]} lines, '
                      f'{target} has {counts[1]}')
    total += 1
    empty += not (src.strip() and tgt.strip())
  if empty:
    logging.warning('%s: skipping %d of %d pairs with an empty side', source, empty, total)
  return total - empty


def _split_tsv_line(line: str, path: str, number: int) -> tuple[str, str]:
  """(source, target) of one TSV line; DataError if it has no TAB."""
  if '\t' not in line:
    raise DataError(f'{path}:{number}: no TAB between source and target')
  source, target = line.split('\t', 1)
  return source, target


def _count_lines(path: str) -> int:
  return sum(1 for _ in _read_lines(path))


def text_dataset(source: str, target: Optional[str]) -> tf.data.Dataset:
  """(source, target) string pairs from two line-aligned files or one TSV, in file order."""
  def lines(path: str) -> tf.data.Dataset:
    return tf.data.TextLineDataset(path, compression_type='GZIP' if path.endswith('.gz') else '')

  if target:
    return tf.data.Dataset.zip(lines(source), lines(target))
  split = lambda line: tuple(tf.unstack(tf.strings.split(line, '\t', maxsplit=1), num=2))
  return lines(source).map(split)


def _text_paths(config: ml_collections.ConfigDict, split: str) -> tuple[str, Optional[str]]:
  """(source, target) file paths of a split for the 'text' and 'bible' datasets."""
  if config.dataset == 'text':
    return config[f'{split}_source'], config[f'{split}_target']
  name = config[f'{split}_split']
  name = _BIBLE_SPLIT_ALIASES.get(name, name)
  if name not in ('train', 'dev', 'test'):
    raise DataError(f'bible: unknown split {name!r}; available: train, dev, test')
  for lang in (config.source_lang, config.target_lang):
    if lang not in BIBLE_LANGS:
      raise DataError(f'bible: unknown language {lang!r}; available: {", ".join(BIBLE_LANGS)}')
  return (os.path.join(BIBLE_DIR, f'{name}.{config.source_lang}.gz'),
          os.path.join(BIBLE_DIR, f'{name}.{config.target_lang}.gz'))


# ---------------------------------------------------------------------- tfds


def tfds_dataset(name: str, split: str, source_lang: str, target_lang: str,
                 data_dir: Optional[str] = None, process_index: int = 0,
                 process_count: int = 1) -> tf.data.Dataset:
  """(source, target) string pairs of this process's shard of a prepared tfds split."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'unknown tfds dataset {name!r}: {str(e).splitlines()[0]}') from None
  if not builder.is_prepared():
    raise DataError(f'tfds dataset {name!r} is not prepared in {builder.data_dir}; '
                    f'run `tfds build {name} --data_dir=...` first')
  splits = builder.info.splits
  for split_name in re.findall(r'([^\[+\]]+)(?:\[[^\]]*\])?', split):
    if split_name.strip() not in splits:
      raise DataError(f'{name}: unknown split {split!r}; available: {", ".join(sorted(splits))}')
  features = builder.info.features
  for lang in (source_lang, target_lang):
    if lang not in features:
      raise DataError(f'{name}: no language {lang!r}; available: {", ".join(sorted(features))}')
  shard = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
  ds = builder.as_dataset(split=shard, shuffle_files=False)
  return ds.map(lambda ex: (ex[source_lang], ex[target_lang]), num_parallel_calls=AUTOTUNE)


# ------------------------------------------------------------------- sources


# A side made only of what Python's str.isspace() calls whitespace (as `check_parallel_text`
# counts it), in RE2 syntax: ASCII space and controls, U+0085 and Unicode separators (Z).
_BLANK = r'[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]*'


def raw_dataset(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
                process_count: int = 1) -> tf.data.Dataset:
  """(source, target) string pairs of a split ('train'|'eval'|'test'), this process's shard.

  Pairs with an empty side are skipped. Text inputs are validated first (DataError naming
  the files if they hold no usable pair).
  """
  if split not in SPLITS:
    raise DataError(f'unknown split role {split!r}; expected one of {SPLITS}')
  if config.dataset == 'tfds':
    ds = tfds_dataset(config.tfds_name, config[f'{split}_split'], config.source_lang,
                      config.target_lang, config.tfds_data_dir or None, process_index,
                      process_count)
  elif config.dataset in ('text', 'bible'):
    source, target = _text_paths(config, split)
    if not source:
      raise DataError(f'text: no file given for split {split!r} (config.{split}_source)')
    if not check_parallel_text(source, target):
      raise DataError(f'{source}{f" / {target}" if target else ""}: no sentence pairs (the '
                      f'{split} files are empty, or every pair has an empty side)')
    ds = text_dataset(source, target).shard(process_count, process_index)
  else:
    raise DataError(f'unknown dataset {config.dataset!r}; expected bible, tfds or text')
  blank = lambda x: tf.strings.regex_full_match(x, _BLANK)
  return ds.filter(lambda s, t: tf.logical_not(blank(s) | blank(t)))


def iterate_pairs(pairs: tf.data.Dataset, chunk: int = 1024) -> Iterator[tuple[str, str]]:
  """Python (source, target) strings of a pair dataset, fetched in chunks (much faster
  than eager per-element iteration)."""
  for sources, targets in pairs.batch(chunk).as_numpy_iterator():
    for source, target in zip(sources, targets):
      yield source.decode('utf-8'), target.decode('utf-8')


def load_raw(config: ml_collections.ConfigDict, split: str) -> list[tuple[str, str]]:
  """All (source, target) sentence pairs of a split ('train'|'eval'|'test'), in order."""
  return list(iterate_pairs(raw_dataset(config, split)))


# ---------------------------------------------------------------- vocabulary


def vocab_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The run's SentencePiece model: config.vocab_path, default <workdir>/spm.model."""
  return config.vocab_path or os.path.join(workdir, 'spm.model')


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer at `vocab_path(config, workdir)`; trained there first if absent."""
  path = vocab_path(config, workdir)

  def sentences() -> Iterator[str]:
    for pair in iterate_pairs(raw_dataset(config, 'train')):
      yield from pair

  return tokenizer_lib.load_or_train(path, sentences(), config.vocab_size,
                                     config.vocab_model_type, config.vocab_max_sentences,
                                     config.seed)


def tokenize(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Tokenizer,
             chunk: int = 256, alpha: float = 0.0, nbest_size: int = -1) -> tf.data.Dataset:
  """String pairs → {'inputs', 'targets'} int32 id vectors ending in EOS (order kept).

  `alpha` > 0 samples each sentence's segmentation anew every time it is read
  (subword regularisation, see `Tokenizer.tf_tokenizer`); 0: always the best one.
  """
  sp = tokenizer.tf_tokenizer(alpha, nbest_size)

  def encode(text: tf.Tensor) -> tf.RaggedTensor:
    ids = sp.tokenize(text)
    eos = tf.fill([ids.nrows(), 1], tf.constant(tokenizer_lib.EOS_ID, ids.dtype))
    return tf.concat([ids, eos], axis=1)

  return (pairs.batch(chunk)
          .map(lambda s, t: {'inputs': encode(s), 'targets': encode(t)},
               num_parallel_calls=AUTOTUNE)
          .unbatch()
          .map(lambda ex: ex))  # unbatched rows come typed as ragged rank 0: make them dense


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


def _empty_row(length: int) -> dict[str, tf.Tensor]:
  row = {key: tf.zeros([length], tf.int32) for key in PACKED_KEYS}
  row.update({'inputs_len': tf.constant(0), 'targets_len': tf.constant(0),
              'segments': tf.constant(0)})
  return row


def _append(row: dict[str, tf.Tensor], example: dict[str, tf.Tensor],
            length: int) -> dict[str, tf.Tensor]:
  """`row` with `example` placed after its current contents as a new segment."""
  segment = row['segments'] + tf.cast(tf.size(example['inputs']) > 0, tf.int32)
  new = {'segments': segment}
  for side in SIDES:
    start, size = row[f'{side}_len'], tf.size(example[side])
    place = lambda values: tf.pad(values, [[start, length - start - size]])
    new[side] = row[side] + place(tf.cast(example[side], tf.int32))
    new[f'{side}_position'] = row[f'{side}_position'] + place(tf.range(size))
    new[f'{side}_segmentation'] = row[f'{side}_segmentation'] + place(tf.fill([size], segment))
    new[f'{side}_len'] = start + size
  return new


def pack(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Greedily pack examples (each side ≤ length) into rows of `length` tokens per side.

  Examples are kept in order; a row is closed when the next example does not fit
  on either side. Output: dicts with the six PACKED_KEYS, int32 [length].
  """
  sentinel = tf.data.Dataset.from_tensors(
      {side: tf.zeros([0], ds.element_spec[side].dtype) for side in SIDES})

  def step(row, example):
    is_end = tf.equal(tf.size(example['inputs']), 0)
    fits = tf.logical_and(row['inputs_len'] + tf.size(example['inputs']) <= length,
                          row['targets_len'] + tf.size(example['targets']) <= length)
    emit = tf.logical_and(tf.logical_or(is_end, tf.logical_not(fits)), row['segments'] > 0)
    base = tf.nest.map_structure(lambda kept, empty: tf.where(fits, kept, empty),
                                 row, _empty_row(length))
    return _append(base, example, length), ({k: row[k] for k in PACKED_KEYS}, emit)

  return (ds.concatenate(sentinel)
          .scan(_empty_row(length), step)
          .filter(lambda row, emit: emit)
          .map(lambda row, emit: row))


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


def train_dataset(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Tokenizer,
                  config: ml_collections.ConfigDict, process_count: int = 1) -> tf.data.Dataset:
  """Infinite shuffled train batches (see module docstring) from this process's pairs."""
  tokens = filter_length(tokenize(pairs.shuffle(config.shuffle_buffer, seed=config.seed)
                                  .repeat(), tokenizer, alpha=config.get('spm_alpha', 0.0),
                                  nbest_size=config.get('spm_nbest_size', -1)),
                         config.max_len)
  if config.batching == 'pack':
    rows = _per_process(config.batch_size, process_count, 'batch_size')
    batches = pack(tokens, config.max_len).batch(rows, drop_remainder=True)
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


def eval_dataset(pairs: tf.data.Dataset, tokenizer: tokenizer_lib.Tokenizer, max_len: int,
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
                 process_index: Optional[int] = None, process_count: Optional[int] = None
                 ) -> tuple[tokenizer_lib.Tokenizer, TrainIterator, tf.data.Dataset,
                            tf.data.Dataset]:
  """(tokenizer, train iterator, eval batches, test batches) for this process."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count > 1 and config.batching == 'tokens':
    # Each host would pick its own bucket shape per step; the global batch needs one.
    raise DataError("batching='tokens' runs on one host only: use batching='pack' with "
                    f'{count} processes')
  tokenizer = get_tokenizer(config, workdir)
  train_pairs = raw_dataset(config, 'train', index, count)
  _log_too_long(tokenize(train_pairs, tokenizer), config.max_len, f'train (process {index})',
                limit=TRAIN_LENGTH_SAMPLE)
  train_iter = TrainIterator(train_dataset(train_pairs, tokenizer, config, count))
  eval_ds, test_ds = (
      eval_dataset(raw_dataset(config, split), tokenizer, config.max_eval_len,
                   config.batch_size, index, count, split)
      for split in ('eval', 'test'))
  return tokenizer, train_iter, eval_ds, test_ds
