"""Where training pairs come from: parallel text files, the embedded Bible corpus, tfds.

`raw_dataset(config, split, process_index, process_count)` -> this process's shard of a
split's (source, target) string pairs as a `tf.data.Dataset` (the translation task's data
hook, `tasks.Translation.read_pairs`); `load_raw(config, split)` -> all pairs of a split as
Python strings (e.g. for BLEU). Text inputs are validated first: a missing file, a
directory, a broken `.gz`, non-UTF-8 bytes, unequal line counts or a TSV line without a
TAB raise `DataError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import logging
import os
import re
import zlib
from typing import Iterator, Optional

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

AUTOTUNE = tf.data.AUTOTUNE
BIBLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data',
                         'bible')
BIBLE_LANGS = ('en', 'es')
_BIBLE_SPLIT_ALIASES = {'validation': 'dev'}
SPLITS = ('train', 'eval', 'test')


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
