"""tf.data input pipeline: sources, bad input, packing, token batching, sharding, resuming."""

import collections
import gzip
import logging
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from transformer_jax.training import input_pipeline as ip
from transformer_jax.training import sources, vocabulary
from transformer_jax import tokenizer as tokenizer_lib

pytestmark = pytest.mark.xdist_group('data')

VOCAB_SIZE = 400
N_TRAIN, N_EVAL = 300, 45


def _bible_lines(split, lang, n=None):
  with gzip.open(os.path.join(sources.BIBLE_DIR, f'{split}.{lang}.gz'), 'rt', encoding='utf-8') as f:
    return f.read().splitlines()[:n]


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return str(path)


class TinyTranslate(tfds.core.GeneratorBasedBuilder):
  """A small WMT-like tfds dataset (de/en Translation feature) built locally."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.Translation(languages=('de', 'en')),
        supervised_keys=('de', 'en'))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(40), 'validation': self._generate_examples(7)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'de': f'Satz Nummer {i}.', 'en': f'Sentence number {i}.'}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Small English→Spanish text files (a slice of the Bible corpus) and a trained vocab."""
  root = tmp_path_factory.mktemp('text')
  paths = {
      'train_source': _write(root / 'train.en', _bible_lines('train', 'en', N_TRAIN)),
      'train_target': _write(root / 'train.es', _bible_lines('train', 'es', N_TRAIN)),
      'eval_source': _write(root / 'dev.en', _bible_lines('dev', 'en', N_EVAL)),
      'eval_target': _write(root / 'dev.es', _bible_lines('dev', 'es', N_EVAL)),
  }
  paths['test_source'], paths['test_target'] = paths['eval_source'], paths['eval_target']
  paths['vocab_path'] = str(root / 'spm.model')
  vocabulary.load_or_train(paths['vocab_path'],
                              _bible_lines('train', 'en', 2000) + _bible_lines('train', 'es', 2000),
                              vocab_size=VOCAB_SIZE)
  return paths


def make_config(files, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='text', tfds_name='', tfds_data_dir='', train_split='train',
      eval_split='validation', test_split='test', source_lang='en', target_lang='es',
      vocab_size=VOCAB_SIZE, vocab_model_type='unigram', vocab_max_sentences=10_000,
      max_len=48, max_eval_len=256, batching='pack', batch_size=8, pack_window=64,
      tokens_per_batch=512,
      bucket_boundaries=(), shuffle_buffer=64, seed=0, **files))
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def tokenizer(files):
  return ip.get_tokenizer(make_config(files), workdir='unused')


@pytest.fixture(scope='module')
def examples(files, tokenizer):
  """Tokenised training pairs (≤ 48 tokens a side), in file order."""
  pairs = sources.raw_dataset(make_config(files), 'train')
  return list(ip.filter_length(ip.tokenize(pairs, tokenizer), 48).as_numpy_iterator())


def _take(train_iter, n):
  return [next(train_iter) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


# ------------------------------------------------------------------ packing


def test_packing_keeps_every_token_and_never_mixes_segments(examples):
  length = 48
  rows = list(ip.pack(tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ip.SIDES}),
      length, window=4096).as_numpy_iterator())
  assert len(rows) < len(examples)  # several examples share a row
  unpacked = []
  for row in rows:
    assert set(row) == set(ip.PACKED_KEYS)
    assert all(v.shape == (length,) and v.dtype == np.int32 for v in row.values())
    segments = row['inputs_segmentation']
    n = segments.max()
    assert n >= 1 and row['targets_segmentation'].max() == n
    for side in ip.SIDES:
      seg, pos, tok = (row[f'{side}_segmentation'], row[f'{side}_position'], row[side])
      assert np.all(np.diff(seg[seg > 0]) >= 0) and set(seg[seg > 0]) == set(range(1, n + 1))
      assert np.all(tok[seg == 0] == 0) and np.all(pos[seg == 0] == 0) and np.all(tok[seg > 0] > 0)
    for s in range(1, n + 1):
      example = {}
      for side in ip.SIDES:
        mask = row[f'{side}_segmentation'] == s
        np.testing.assert_array_equal(row[f'{side}_position'][mask], np.arange(mask.sum()))
        example[side] = row[side][mask]
      unpacked.append(example)
  assert len(unpacked) == len(examples)
  for got, want in zip(unpacked, examples):
    for side in ip.SIDES:
      np.testing.assert_array_equal(got[side], want[side])


def _greedy_rows(examples, length, window):
  """Reference packing, one example at a time: a new row when the next example does not
  fit on either side, and at the start of every window of `window` examples."""
  rows = []
  for index, example in enumerate(examples):
    row = rows[-1] if rows else None
    if (row is None or index % window == 0
        or any(row['used'][side] + len(example[side]) > length for side in ip.SIDES)):
      row = {'used': dict.fromkeys(ip.SIDES, 0), 'segments': 0,
             **{key: np.zeros(length, np.int32) for key in ip.PACKED_KEYS}}
      rows.append(row)
    row['segments'] += 1
    for side in ip.SIDES:
      start, size = row['used'][side], len(example[side])
      row[side][start:start + size] = example[side]
      row[f'{side}_position'][start:start + size] = np.arange(size)
      row[f'{side}_segmentation'][start:start + size] = row['segments']
      row['used'][side] += size
  return [{key: row[key] for key in ip.PACKED_KEYS} for row in rows]


@pytest.mark.parametrize('window', [7, 4096])  # 4096: all examples in one window
def test_packing_is_greedy_within_each_window(examples, window):
  rng = np.random.default_rng(0)  # short random rows: many rows are filled exactly
  short = [{side: rng.integers(1, 50, rng.integers(1, 9), dtype=np.int32) for side in ip.SIDES}
           for _ in range(300)]
  for data, length in ((examples, 48), (short, 8)):
    dataset = tf.data.Dataset.from_generator(
        lambda data=data: iter(data),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ip.SIDES})
    rows = list(ip.pack(dataset, length, window).as_numpy_iterator())
    assert len(data) < 4096 and len(rows) > len(data) // window
    _assert_same_batches(rows, _greedy_rows(data, length, window))


# ----------------------------------------------------------- token batching


def test_bucket_lengths_default_ladder_and_custom():
  assert ip.bucket_lengths(64) == [8, 12, 16, 24, 32, 48, 64]
  assert ip.bucket_lengths(64, ()) == ip.bucket_lengths(64)
  assert ip.bucket_lengths(50, [40, 10, 100]) == [10, 40, 50]


def test_token_batches_respect_the_budget_and_bucket_shapes(examples):
  budget, lengths = 256, ip.bucket_lengths(48)
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples * 3),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ip.SIDES})
  batches = list(ip.batch_by_tokens(ds, budget, lengths).as_numpy_iterator())
  shapes = {b['inputs'].shape for b in batches}
  assert shapes <= {(budget // n, n) for n in lengths} and len(shapes) > 1
  total = 0
  for batch in batches:
    assert set(batch) == {'inputs', 'targets'}
    assert batch['inputs'].shape == batch['targets'].shape
    assert batch['inputs'].size <= budget
    real = np.count_nonzero(batch['inputs'], axis=1)
    assert np.all(real > 0)
    total += len(real)
  assert total > 0.8 * len(examples) * 3  # only incomplete last batches are dropped


def test_token_batches_of_one_step_share_a_shape_with_gradient_accumulation(files, tokenizer):
  train_iter = _train_iter(files, tokenizer, batching='tokens', grad_accum_steps=3)
  shapes = [batch['inputs'].shape for batch in _take(train_iter, 12)]
  assert all(len(set(shapes[i:i + 3])) == 1 for i in range(0, 12, 3))
  assert len(set(shapes)) > 1


def test_token_batching_rejects_a_budget_below_one_sequence(examples):
  ds = tf.data.Dataset.from_tensors({k: tf.constant([5, 1]) for k in ip.SIDES})
  with pytest.raises(sources.DataError, match='tokens_per_batch=32 is smaller than one sequence'):
    ip.batch_by_tokens(ds, 32, [16, 48])


# ------------------------------------------------ determinism and resuming


def _train_iter(files, tokenizer, **overrides):
  config = make_config(files, **overrides)
  return ip.TrainIterator(ip.train_dataset(sources.raw_dataset(config, 'train'), tokenizer, config))


@pytest.mark.parametrize('batching', ['pack', 'tokens'])
def test_same_seed_same_batches_and_other_seed_differs(files, tokenizer, batching):
  first = _take(_train_iter(files, tokenizer, batching=batching, seed=0), 4)
  _assert_same_batches(first, _take(_train_iter(files, tokenizer, batching=batching, seed=0), 4))
  other = _take(_train_iter(files, tokenizer, batching=batching, seed=1), 4)
  assert not all(np.array_equal(a['inputs'], b['inputs']) for a, b in zip(first, other))


def test_train_batches_have_the_documented_shapes(files):
  _, train_iter, _, _ = ip.get_datasets(make_config(files), 'unused', 0, 1)
  batch = next(train_iter)
  assert set(batch) == set(ip.PACKED_KEYS)
  assert all(v.shape == (8, 48) and v.dtype == np.int32 for v in batch.values())
  assert np.all(batch['inputs_segmentation'][:, 0] == 1)


def test_pack_window_bounds_the_examples_a_row_holds(files, tokenizer):
  """A row closes at a window's end: windows of one example give one example a row."""
  rows = lambda window: np.concatenate([b['inputs_segmentation'] for b in _take(  # noqa: E731
      _train_iter(files, tokenizer, pack_window=window), 4)])
  assert rows(64).max() > 1 and rows(1).max() == 1


@pytest.mark.parametrize('batching', ['pack', 'tokens'])
def test_restored_iterator_continues_exactly(files, tokenizer, tmp_path, batching):
  train_iter = _train_iter(files, tokenizer, batching=batching)
  _take(train_iter, 20)  # past the first epoch (~15 batches): shuffle and repeat state matter
  state = train_iter.get_state()
  prefix = train_iter.save(str(tmp_path / 'it'))
  expected = _take(train_iter, 5)

  for restore in (lambda it: it.set_state(state), lambda it: it.restore(prefix)):
    resumed = _train_iter(files, tokenizer, batching=batching)
    restore(resumed)
    _assert_same_batches(_take(resumed, 5), expected)


# ----------------------------------------------------------------- sharding


def test_process_shards_are_disjoint_and_cover_the_data(files):
  config = make_config(files)
  every = collections.Counter(sources.load_raw(config, 'train'))
  shards = [collections.Counter(sources.raw_dataset(config, 'train', i, 2).as_numpy_iterator())
            for i in range(2)]
  assert abs(sum(shards[0].values()) - sum(shards[1].values())) <= 1
  decoded = collections.Counter({(s.decode(), t.decode()): n
                                 for shard in shards for (s, t), n in shard.items()})
  assert sum(shards, collections.Counter()).total() == every.total() == N_TRAIN
  assert decoded == every


def test_eval_batches_cover_each_example_once_across_processes(files, tokenizer):
  config = make_config(files)
  pairs = sources.raw_dataset(config, 'eval')
  per_process = [list(ip.eval_dataset(pairs, tokenizer, 256, 8, i, 2).as_numpy_iterator())
                 for i in range(2)]
  assert len(per_process[0]) == len(per_process[1]) > 0  # same number of steps everywhere
  rows = []
  for batches in per_process:
    for batch in batches:
      assert batch['inputs'].shape == batch['targets'].shape == (4, 256)
      rows += [tuple(r[r > 0]) for r in batch['inputs'] if r.any()]
  want = [tuple(ex['inputs']) for ex in ip.tokenize(pairs, tokenizer).as_numpy_iterator()]
  assert sorted(rows) == sorted(want) and len(want) == N_EVAL


def test_eval_order_is_the_file_order(files, tokenizer):
  _, _, eval_ds, test_ds = ip.get_datasets(make_config(files), 'unused', 0, 1)
  batches = list(eval_ds.as_numpy_iterator())
  assert len(batches) == -(-N_EVAL // 8) and batches[-1]['inputs'][N_EVAL % 8:].max() == 0
  first = tokenizer.decode(batches[0]['inputs'][0])
  assert first == _bible_lines('dev', 'en', 1)[0]
  assert len(list(test_ds.as_numpy_iterator())) == len(batches)


# ---------------------------------------------------------------- bad input


def test_mismatched_line_counts_name_both_files(files, tmp_path):
  short = _write(tmp_path / 'short.es', _bible_lines('train', 'es', 10))
  config = make_config(files, train_target=short)
  with pytest.raises(sources.DataError, match=rf'line counts differ: .*train.en has {N_TRAIN} lines, '
                                         rf'.*short.es has 10'):
    sources.raw_dataset(config, 'train')


def test_non_utf8_bytes_give_file_and_line(files, tmp_path):
  bad = tmp_path / 'bad.en'
  bad.write_bytes(b'fine\nalso fine\nna\xefve\n')
  with pytest.raises(sources.DataError, match=r'bad.en:3: not UTF-8'):
    sources.check_parallel_text(str(bad), files['train_target'])


def test_gzip_input_and_bad_bytes_inside_it(tmp_path):
  good, bad = tmp_path / 'a.tsv.gz', tmp_path / 'b.tsv.gz'
  good.write_bytes(gzip.compress('one\tuno\n\t\ntwo\tdos\n'.encode()))
  bad.write_bytes(gzip.compress(b'one\tuno\n\xff\tdos\n'))
  assert list(sources.text_dataset(str(good), '').as_numpy_iterator())[2] == (b'two', b'dos')
  assert sources.check_parallel_text(str(good), '') == 2
  with pytest.raises(sources.DataError, match=r'b.tsv.gz:2: not UTF-8'):
    sources.check_parallel_text(str(bad), '')


def test_a_directory_or_a_broken_gzip_names_the_file(tmp_path):
  not_gzip = _write(tmp_path / 'plain.tsv.gz', ['one\tuno'])
  cut = tmp_path / 'cut.tsv.gz'
  cut.write_bytes(gzip.compress(b'one\tuno\n' * 100)[:20])
  for path, reason in ((tmp_path, 'is a directory'), (not_gzip, 'not a valid gzip file'),
                       (cut, 'not a valid gzip file')):
    with pytest.raises(sources.DataError, match=rf'^{path}: {reason}'):
      sources.check_parallel_text(str(path), '')


def test_missing_file(files):
  config = make_config(files, eval_source='/nonexistent/dev.en')
  with pytest.raises(sources.DataError, match='/nonexistent/dev.en: file not found'):
    sources.load_raw(config, 'eval')


def test_tsv_line_without_tab(tmp_path):
  tsv = _write(tmp_path / 'pairs.tsv', ['a\tb', 'no tab here'])
  with pytest.raises(sources.DataError, match=r'pairs.tsv:2: no TAB'):
    sources.check_parallel_text(tsv, None)


def test_empty_lines_are_skipped_and_counted(files, tmp_path, caplog):
  # Whitespace of any kind only (no-break space, ideographic space, ...) is empty too.
  src = _write(tmp_path / 's.txt', ['one', '', 'three', ' ', '\u00a0\u3000', 'six\u00a0'])
  tgt = _write(tmp_path / 't.txt', ['uno', 'dos', '', 'cuatro', 'cinco', '\u2003seis'])
  config = make_config(files, train_source=src, train_target=tgt)
  with caplog.at_level(logging.WARNING):
    assert sources.load_raw(config, 'train') == [('one', 'uno'), ('six\u00a0', '\u2003seis')]
  assert 'skipping 4 of 6 pairs with an empty side' in caplog.text


def test_long_pairs_are_filtered_and_counted(files, tokenizer, caplog):
  with caplog.at_level(logging.WARNING):
    batches = list(ip.eval_dataset(sources.raw_dataset(make_config(files), 'eval'), tokenizer, 40, 8)
                   .as_numpy_iterator())
  kept = sum(int(b['inputs'][:, 0].astype(bool).sum()) for b in batches)
  assert 0 < kept < N_EVAL
  assert f'eval: dropping {N_EVAL - kept} of {N_EVAL} pairs longer than 40 tokens' in caplog.text


def test_empty_split_or_every_pair_too_long_fails_up_front(files, tmp_path):
  empty = _write(tmp_path / 'empty.txt', [])
  with pytest.raises(sources.DataError,
                     match=rf'^{empty} / {empty}: no sentence pairs \(the eval'):
    ip.get_datasets(make_config(files, eval_source=empty, eval_target=empty), 'unused', 0, 1)
  # An empty (or all-blank) training file: named before SentencePiece would fail on it.
  blank = _write(tmp_path / 'blank.tsv', [' \t ', '\t'])
  with pytest.raises(sources.DataError, match=rf'^{blank}: no sentence pairs \(the train '
                                              r'files are empty, or every pair has an empty '
                                              r'side\)$'):
    ip.get_datasets(make_config(files, train_source=blank, train_target='', vocab_path=''),
                    str(tmp_path / 'workdir'), 0, 1)
  with pytest.raises(sources.DataError,
                     match=rf'^train \(process 0\): all {N_TRAIN} pairs are longer than 2 tokens$'):
    ip.get_datasets(make_config(files, max_len=2), 'unused', 0, 1)


def test_bad_config_values(files):
  with pytest.raises(sources.DataError, match="unknown dataset 'wmt'"):
    sources.raw_dataset(make_config(files, dataset='wmt'), 'train')
  with pytest.raises(sources.DataError, match='batch_size=9 is not divisible by process_count=2'):
    ip.get_datasets(make_config(files, batch_size=9), 'unused', 0, 2)
  with pytest.raises(sources.DataError, match="batching='tokens' runs on one host only"):
    ip.get_datasets(make_config(files, batching='tokens'), 'unused', 0, 2)
  with pytest.raises(sources.DataError, match="bible: unknown language 'de'; available: en, es"):
    sources.raw_dataset(make_config(files, dataset='bible', target_lang='de'), 'train')


# --------------------------------------------------------------------- tfds


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyTranslate(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_tfds_source_on_a_locally_built_dataset(files, tfds_dir):
  config = make_config(files, dataset='tfds', tfds_name='tiny_translate', tfds_data_dir=tfds_dir,
                       source_lang='en', target_lang='de')
  pairs = sources.load_raw(config, 'eval')
  assert sorted(pairs) == sorted((f'Sentence number {i}.', f'Satz Nummer {i}.') for i in range(7))
  shards = [set(sources.raw_dataset(config, 'train', i, 3).as_numpy_iterator()) for i in range(3)]
  assert sum(map(len, shards)) == len(set.union(*shards)) == 40


def test_tfds_unknown_name_split_and_language(files, tfds_dir):
  config = make_config(files, dataset='tfds', tfds_name='tiny_translate', tfds_data_dir=tfds_dir,
                       source_lang='en', target_lang='de', test_split='test')
  with pytest.raises(sources.DataError, match="unknown split 'test'; available: train, validation"):
    sources.raw_dataset(config, 'test')
  with pytest.raises(sources.DataError, match="no language 'fr'; available: de, en"):
    sources.raw_dataset(make_config(files, dataset='tfds', tfds_name='tiny_translate',
                               tfds_data_dir=tfds_dir, target_lang='fr'), 'train')
  with pytest.raises(sources.DataError, match="unknown tfds dataset 'no_such_dataset_xyz'"):
    sources.raw_dataset(make_config(files, dataset='tfds', tfds_name='no_such_dataset_xyz'), 'train')


def test_tfds_dataset_not_prepared(files, tmp_path):
  config = make_config(files, dataset='tfds', tfds_name='tiny_translate',
                       tfds_data_dir=str(tmp_path))
  with pytest.raises(sources.DataError, match="'tiny_translate' is not prepared"):
    sources.raw_dataset(config, 'train')


# ------------------------------------------------------------- Bible corpus


BIBLE_COUNTS = {'train': 28943, 'dev': 1088, 'test': 1046}  # as in data/bible/PROVENANCE.md


def test_embedded_corpus_has_the_documented_counts_and_held_out_books(files):
  config = make_config(files, dataset='bible', eval_split='validation', test_split='test')
  for role, split in (('train', 'train'), ('eval', 'dev'), ('test', 'test')):
    assert len(sources.load_raw(config, role)) == BIBLE_COUNTS[split]
  books = {split: {ref.split()[0] for ref in _bible_lines(split, 'ref')} for split in BIBLE_COUNTS}
  assert books['dev'] == {'Ruth', 'Acts'} and books['test'] == {'Esth', 'John'}
  assert not books['train'] & (books['dev'] | books['test'])
  reverse = make_config(files, dataset='bible', source_lang='es', target_lang='en')
  assert sources.load_raw(reverse, 'test')[0] == tuple(_bible_lines('test', lang, 1)[0]
                                                  for lang in ('es', 'en'))


# ------------------------------------------------------------------ training on text


def test_training_on_text_reports_both_bleus_and_keeps_translations(files, tmp_path):
  """The user's own parallel text end to end: training's periodic evaluation decodes the
  first dev sentences, logs sacreBLEU and tokenized BLEU, and writes the translations."""
  import json
  from transformer_jax import bleu
  from transformer_jax.training import train_lib
  from transformer_jax.training import config as config_lib
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                              'tiny.py'))
  config.update(dataset='text', source_lang='en', target_lang='es', vocab_size=VOCAB_SIZE,
                vocab_model_type='unigram', max_len=48, max_eval_len=48, num_train_steps=2,
                eval_every_steps=2, num_eval_batches=1, decode_sentences=3,
                max_decode_len=8, average_last=0, pack_window=64, **files)
  config.model.max_len = 48
  train_lib.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    (record,) = [r for r in map(json.loads, f) if 'eval/bleu' in r]
  hypotheses = (tmp_path / 'translations' / 'eval_step2.txt').read_text('utf-8').splitlines()
  scores = bleu.corpus_bleu(hypotheses, _bible_lines('dev', 'es', 3), target_lang='es')
  assert record['step'] == 2 and len(hypotheses) == 3
  assert record['eval/bleu'] == pytest.approx(scores.sacrebleu)
  assert record['eval/bleu_tokenized'] == pytest.approx(scores.tokenized)


# ------------------------------------------------------------ subword regularisation


@pytest.mark.parametrize('alpha', [0.0, 0.5])
def test_subword_sampling_changes_segmentations_across_epochs_only_with_alpha(
    files, tokenizer, alpha):
  """Two passes over the same sentences: sampled segmentations differ somewhere with
  alpha > 0 (each decoding back to the sentence), never with alpha = 0 (the best one)."""
  pairs = ip.raw_dataset(make_config(files), 'train').take(40)
  sampling = tokenizer_lib.Sampling(alpha) if alpha else None
  tokens = ip.tokenize(pairs.repeat(2), tokenizer, chunk=16, sampling=sampling)
  passes = [ex['inputs'].tolist() for ex in tokens.as_numpy_iterator()]
  first, second = passes[:40], passes[40:]
  best = [ex['inputs'].tolist() for ex in ip.tokenize(pairs, tokenizer).as_numpy_iterator()]
  sources = [s for s, _ in ip.iterate_pairs(pairs)]
  if alpha == 0:
    assert first == second == best
  else:
    assert first != second and first != best
    assert [tokenizer.decode(ids) for ids in first + second] == sources + sources


def test_training_batches_sample_segmentations_but_eval_batches_do_not(files, tokenizer):
  config = make_config(files, spm_alpha=0.5, batching='pack', batch_size=4)
  sampled = ip.train_dataset(ip.raw_dataset(config, 'train'), tokenizer, config)
  plain = ip.train_dataset(ip.raw_dataset(config, 'train'),
                           tokenizer, make_config(files, batching='pack', batch_size=4))
  a, b = (next(iter(ds))['inputs'].numpy() for ds in (sampled, plain))
  assert not np.array_equal(a, b)  # same shuffle seed, other segmentations
  evals = [list(ip.eval_dataset(ip.raw_dataset(config, 'eval'), tokenizer, 256, 8)
                .as_numpy_iterator())[0]['inputs'] for _ in range(2)]
  np.testing.assert_array_equal(*evals)


@pytest.fixture(scope='module')
def bpe_tokenizer(files, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('bpe') / 'bpe.model')
  return vocabulary.load_or_train(path, _bible_lines('train', 'en', 2000)
                                  + _bible_lines('train', 'es', 2000), VOCAB_SIZE, 'bpe')


@pytest.mark.parametrize('kind, alpha', [('unigram', 0.5), ('bpe', 0.1)])
def test_subword_sampling_is_reproducible_for_a_seed_and_resumes_exactly(
    files, tokenizer, bpe_tokenizer, kind, alpha):
  """The same config and seed give the same sampled batches (unigram sampling, BPE-dropout),
  other than the best segmentation's; a restored iterator continues the sequence an
  uninterrupted one draws; another seed samples other segmentations of the same pairs."""
  vocab = tokenizer if kind == 'unigram' else bpe_tokenizer
  first = _take(_train_iter(files, vocab, spm_alpha=alpha), 20)  # past one epoch
  _assert_same_batches(first, _take(_train_iter(files, vocab, spm_alpha=alpha), 20))
  best = _take(_train_iter(files, vocab), 1)[0]
  assert not np.array_equal(first[0]['inputs'], best['inputs'])
  interrupted = _train_iter(files, vocab, spm_alpha=alpha)
  _take(interrupted, 10)
  resumed = _train_iter(files, vocab, spm_alpha=alpha)
  resumed.set_state(interrupted.get_state())
  _assert_same_batches(_take(resumed, 10), first[10:])

  pairs = ip.raw_dataset(make_config(files), 'train').take(64)
  sampled = lambda seed: [ex['targets'].tolist() for ex in ip.tokenize(  # noqa: E731
      pairs, vocab, chunk=16, sampling=tokenizer_lib.Sampling(alpha, seed=seed)
  ).as_numpy_iterator()]
  assert sampled(1) == sampled(1) != sampled(2)
