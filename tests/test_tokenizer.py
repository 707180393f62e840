"""SentencePiece vocabulary: special ids, round trips, in-graph parity, caching."""

import gzip
import io
import os

import pytest
import sentencepiece as spm

from transformer_jax.training import sources, vocabulary
from transformer_jax import tokenizer as tokenizer_lib

pytestmark = pytest.mark.xdist_group('data')

SENTENCES = [
    'In the beginning, God created the heavens and the earth.',
    'En el principio crió Dios los cielos y la tierra.',
    '“Who are you, Lord?” ¿Quién eres, Señor?',
]


@pytest.fixture(scope='module')
def corpus():
  """Both sides of the embedded Bible dev split (~2k sentences)."""
  lines = []
  for lang in ('en', 'es'):
    with gzip.open(os.path.join(sources.BIBLE_DIR, f'dev.{lang}.gz'), 'rt') as f:
      lines += f.read().splitlines()
  return lines


@pytest.fixture(scope='module')
def vocab_path(corpus, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vocab') / 'spm.model')
  vocabulary.load_or_train(path, corpus, vocab_size=300)
  return path


@pytest.fixture(scope='module')
def tokenizer(vocab_path):
  return vocabulary.load_or_train(vocab_path, [], vocab_size=300)


def test_special_ids_follow_flax_wmt(tokenizer):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert tokenizer.vocab_size == 300


def test_encode_appends_eos_and_decode_round_trips(tokenizer):
  for text in SENTENCES:
    ids = tokenizer.encode(text)
    assert ids[-1] == tokenizer_lib.EOS_ID
    assert tokenizer_lib.PAD_ID not in ids and tokenizer_lib.EOS_ID not in ids[:-1]
    assert tokenizer.decode(ids) == text


def test_decode_stops_at_eos_and_ignores_padding(tokenizer):
  ids = tokenizer.encode(SENTENCES[0])
  assert tokenizer.decode([0] + ids[:3] + [0, 0] + ids[3:] + [0] + ids) == SENTENCES[0]


def test_in_graph_tokenizer_matches_python(tokenizer):
  in_graph = vocabulary.tf_sentencepiece(tokenizer.model_proto).tokenize(SENTENCES).to_list()
  assert [ids + [tokenizer_lib.EOS_ID] for ids in in_graph] == [
      tokenizer.encode(text) for text in SENTENCES]


def test_cached_model_is_reused(vocab_path, tokenizer):
  def must_not_read():
    raise AssertionError('the cached model should be used')
    yield  # pragma: no cover

  again = vocabulary.load_or_train(vocab_path, must_not_read(), vocab_size=300)
  assert again.model_proto == tokenizer.model_proto


def test_cached_model_of_another_size_is_refused(vocab_path):
  with pytest.raises(ValueError, match=r'spm.model has 300 pieces, not vocab_size=500: set '):
    vocabulary.load_or_train(vocab_path, [], vocab_size=500)


def test_cached_file_that_is_not_our_vocabulary_is_refused_by_name(corpus, tmp_path):
  junk = tmp_path / 'junk.model'
  junk.write_bytes(b'not a model')
  with pytest.raises(ValueError, match=r'junk.model is not a usable SentencePiece model: '):
    vocabulary.load_or_train(str(junk), [], vocab_size=300)
  model = io.BytesIO()  # SentencePiece's default special ids: unk 0, bos 1, eos 2, no pad
  spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model,
                                 vocab_size=300, minloglevel=2)
  (tmp_path / 'other_ids.model').write_bytes(model.getvalue())
  with pytest.raises(ValueError, match=r'other_ids.model is not a usable SentencePiece model: '
                                       r'expected pad id 0 and EOS id 1'):
    vocabulary.load_or_train(str(tmp_path / 'other_ids.model'), [], vocab_size=300)


def test_atomic_write_keeps_the_first_model(tmp_path):
  path = str(tmp_path / 'sub' / 'spm.model')
  vocabulary.write_atomic(path, b'first')
  vocabulary.write_atomic(path, b'second')
  assert open(path, 'rb').read() == b'first'
  assert os.listdir(tmp_path / 'sub') == ['spm.model']  # no temporary file left


def test_training_is_deterministic(corpus):
  kwargs = dict(vocab_size=200, model_type='bpe', max_sentences=500, seed=3)
  assert (vocabulary.train_model(corpus, **kwargs)
          == vocabulary.train_model(corpus, **kwargs))


def test_training_failure_is_one_clear_line():
  with pytest.raises(ValueError, match=r'^SentencePiece training failed \(vocab_size=1000\): '
                                       r'Vocabulary size too high \(1000\)\. Please set it '):
    vocabulary.train_model(SENTENCES, vocab_size=1000)
