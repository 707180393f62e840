"""Training a vocabulary and tokenising inside tf.data (TensorFlow; training only).

  * `load_or_train(path, sentences, ...)`: the vocabulary at `path`, training a joint
    SentencePiece model first if absent. Training writes a temporary file and renames it
    with `overwrite=False`, so concurrent hosts never see a partial file and all end up
    using the first model written.
  * `tf_encoders(vocab)`: the (source, target) in-graph encoders of a `tokenizer.Vocabulary`
    (one joint model, or an imported model's two); `tf_sampler(vocab, sampling)` samples
    segmentations instead (subword regularisation), reproducibly for a seed and key.

The vocabularies themselves (`Tokenizer`, `TwoModelVocabulary`) live in the plain
`transformer_jax.tokenizer`, which decoding uses without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tftxt

from transformer_jax.tokenizer import (EOS_ID, PAD_ID, UNK_ID, Sampling, Tokenizer,
                                       Vocabulary, load_vocabulary)


def tf_sentencepiece(model: bytes, out_type: Any = tf.int32) -> tftxt.SentencepieceTokenizer:
  """In-graph tokenizer of a SentencePiece `model`: the best segmentation, as ids (or
  `out_type`, e.g. strings); no EOS: the pipeline adds it."""
  return tftxt.SentencepieceTokenizer(model=model, add_eos=False, out_type=out_type)


def tf_encoders(vocab: Vocabulary) -> tuple[Any, Any]:
  """(source, target) in-graph encoders: string tensor [N] -> ragged ids [N, None] of the
  best segmentation, no EOS.

  A joint model encodes both sides. An imported model's two-model vocabulary splits
  sources with its source model (a leading `>>xx<<` code kept as one piece, as
  `TwoModelVocabulary.encode` does) and targets with its target model, as Marian trains;
  pieces map to ids through the shared vocabulary (unknown: `<unk>`)."""
  if isinstance(vocab, Tokenizer):
    encode = tf_sentencepiece(vocab.model_proto).tokenize
    return encode, encode
  ids = vocab.piece_ids
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(list(ids), list(ids.values()), tf.string, tf.int32),
      ids['<unk>'])

  def encoder(model: bytes, codes: bool) -> Any:
    sp = tf_sentencepiece(model, out_type=tf.string)

    def encode(text: Any) -> Any:
      if codes:  # the code as one piece (empty when there is none), the rest split
        code = tf.strings.regex_replace(text, r'^(>>.*?<<)?(?s:.*)$', r'\1')
        pieces = tf.concat([tf.strings.split(code),
                            sp.tokenize(tf.strings.regex_replace(text, r'^>>.*?<<', ''))],
                           axis=1)
      else:
        pieces = sp.tokenize(text)
      return tf.ragged.map_flat_values(table.lookup, pieces)
    return encode
  return encoder(vocab.source_model, True), encoder(vocab.target_model, False)


def tf_sampler(vocab: Vocabulary, sampling: Sampling) -> Callable[[Any, Any, bool], Any]:
  """In-graph sampled segmentations (subword regularisation, `tokenizer.Sampling`):
  (string tensor [N], key: int64 scalar tensor, target side?) -> ragged ids [N, None], no
  EOS, split as `tf_encoders` splits them.

  The vocabulary's `segment` runs in a `tf.numpy_function` with SentencePiece seeded from
  (`sampling.seed`, key, side), so the samples are a function of the texts, the seed and
  the key alone. (TensorFlow Text's in-graph sampler draws from a generator that cannot
  be seeded.) Calls sample one at a time (SentencePiece's generator is one per process)."""
  def segment(texts: np.ndarray, key: np.ndarray, target: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    seed = np.random.SeedSequence([sampling.seed, int(key), int(target)]).generate_state(1)
    ids = vocab.segment([t.decode('utf-8') for t in texts], target=bool(target),
                        sampling=dataclasses.replace(sampling, seed=int(seed[0])))
    return (np.asarray([i for row in ids for i in row], np.int32),
            np.asarray([len(row) for row in ids], np.int64))

  def sample(texts: Any, key: Any, target: bool) -> Any:
    flat, lengths = tf.numpy_function(segment, [texts, key, target], [tf.int32, tf.int64],
                                      stateful=False)
    return tf.RaggedTensor.from_row_lengths(tf.ensure_shape(flat, [None]),
                                            tf.ensure_shape(lengths, [None]))
  return sample


def train_model(sentences: Iterable[str], vocab_size: int, model_type: str = 'unigram',
                max_sentences: int = 1_000_000, seed: int = 0,
                user_defined_symbols: Sequence[str] = ()) -> bytes:
  """Train a SentencePiece model on `sentences` and return its serialised bytes.

  At most `max_sentences` sentences (a seeded random sample) are used. Each of
  `user_defined_symbols` becomes one piece, always segmented as one (written with a
  leading '▁' it matches a whole space-separated token, e.g. '▁(NP' for the parser's
  `(NP`). Raises ValueError if training fails (e.g. `vocab_size` too large for the
  sentences).
  """
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        user_defined_symbols=list(user_defined_symbols), minloglevel=2)
  except RuntimeError as e:  # e.g. "[...] Vocabulary size too high (8000). Please set it to ..."
    message = str(e).rpartition('] ')[2] or str(e)
    raise ValueError(f'SentencePiece training failed (vocab_size={vocab_size}): '
                     f'{message}') from None
  return model.getvalue()


def write_atomic(path: str, data: bytes) -> None:
  """Write `data` to `path` unless it exists: temp file, then rename (first writer wins)."""
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    f.write(data)
  try:
    tf.io.gfile.rename(tmp, path, overwrite=False)
  except tf.errors.OpError:  # another process wrote it first: keep theirs
    tf.io.gfile.remove(tmp)
    if not tf.io.gfile.exists(path):
      raise


def load_or_train(path: str, sentences: Iterable[str], vocab_size: int,
                  model_type: str = 'unigram', max_sentences: int = 1_000_000,
                  seed: int = 0, user_defined_symbols: Sequence[str] = ()) -> 'Vocabulary':
  """The tokenizer cached at `path`; trains and caches it from `sentences` first if absent
  (`train_model`, with `user_defined_symbols` as single pieces).

  Raises ValueError naming `path` if the cached model is not a SentencePiece model with
  pad id 0 and EOS id 1, or does not have `vocab_size` pieces.
  """
  if not tf.io.gfile.exists(path):
    logging.info('Training a %d-piece %s SentencePiece model for %s', vocab_size, model_type, path)
    write_atomic(path, train_model(sentences, vocab_size, model_type, max_sentences, seed,
                                   user_defined_symbols))
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    tokenizer = load_vocabulary(data)
  except (RuntimeError, ValueError) as e:  # not a SentencePiece model, or other special ids
    raise ValueError(f'{path} is not a usable SentencePiece model: '
                     f'{str(e).splitlines()[0]}') from None
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(f'{path} has {tokenizer.vocab_size} pieces, not vocab_size={vocab_size}: '
                     f'set vocab_size={tokenizer.vocab_size}, or delete it to train a new one')
  logging.info('Loaded SentencePiece model %s (%d pieces)', path, tokenizer.vocab_size)
  return tokenizer
