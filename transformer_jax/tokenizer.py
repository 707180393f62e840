"""Joint SentencePiece vocabulary: training (cached, atomic) and tokenisation.

Ids follow the flax examples/wmt convention: pad=0, eos=1, unk=2 and no bos (the
model uses 0 both as padding and as the decoder's start token).

  * `load_or_train(path, sentences, ...)`: the model bytes at `path`, training
    them first if absent. Training writes a temporary file and renames it with
    `overwrite=False`, so concurrent hosts never see a partial file and all end
    up using the first model written.
  * `Tokenizer`: Python-side encode (str → ids, EOS appended) / decode.
  * `Tokenizer.tf_tokenizer()`: the same model as a tensorflow-text
    `SentencepieceTokenizer`, for tokenising inside a tf.data pipeline.

TensorFlow (tf.io.gfile for gs:// paths, tensorflow-text) is imported only by the
functions that need it, so decoding and the translate CLI run without it.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from typing import Iterable, Sequence

import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Tokenizer:
  """A SentencePiece model with EOS-terminated encoding and pad/EOS-aware decoding."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if (self._sp.pad_id(), self._sp.eos_id()) != (PAD_ID, EOS_ID):
      raise ValueError(f'expected pad id {PAD_ID} and EOS id {EOS_ID}, got '
                       f'{self._sp.pad_id()} and {self._sp.eos_id()}')

  @property
  def vocab_size(self) -> int:
    """Number of ids (including pad, eos and unk)."""
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` followed by EOS."""
    return self._sp.encode(text) + [EOS_ID]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOS; pad ids are ignored."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    return self._sp.decode([i for i in ids if i != PAD_ID])

  def pieces(self, ids: Sequence[int]) -> list[str]:
    """The subword string of each id (for labelling plots)."""
    return [self._sp.id_to_piece(int(i)) for i in ids]

  def tf_tokenizer(self, alpha: float = 0.0,
                   nbest_size: int = -1) -> 'tftxt.SentencepieceTokenizer':
    """In-graph tokenizer from the same model (no EOS: add it in the pipeline).

    `alpha` > 0 samples a segmentation per call (subword regularisation, Kudo 2018):
    unigram models sample among the `nbest_size` best (-1: all) with inverse temperature
    `alpha`; BPE models drop merges with probability `alpha` (BPE-dropout). 0: the best.
    """
    import tensorflow_text as tftxt  # pylint: disable=g-import-not-at-top
    if alpha <= 0:
      return tftxt.SentencepieceTokenizer(model=self.model_proto, add_eos=False)
    return tftxt.SentencepieceTokenizer(model=self.model_proto, add_eos=False,
                                        nbest_size=nbest_size, alpha=alpha)


def train_model(sentences: Iterable[str], vocab_size: int, model_type: str = 'unigram',
                max_sentences: int = 1_000_000, seed: int = 0) -> bytes:
  """Train a SentencePiece model on `sentences` and return its serialised bytes.

  At most `max_sentences` sentences (a seeded random sample) are used. Raises
  ValueError if training fails (e.g. `vocab_size` too large for the sentences).
  """
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        minloglevel=2)
  except RuntimeError as e:  # e.g. "[...] Vocabulary size too high (8000). Please set it to ..."
    message = str(e).rpartition('] ')[2] or str(e)
    raise ValueError(f'SentencePiece training failed (vocab_size={vocab_size}): '
                     f'{message}') from None
  return model.getvalue()


def write_atomic(path: str, data: bytes) -> None:
  """Write `data` to `path` unless it exists: temp file, then rename (first writer wins)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
                  seed: int = 0) -> Tokenizer:
  """The tokenizer cached at `path`; trains and caches it from `sentences` first if absent.

  Raises ValueError naming `path` if the cached model is not a SentencePiece model with
  pad id 0 and EOS id 1, or does not have `vocab_size` pieces.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    logging.info('Training a %d-piece %s SentencePiece model for %s', vocab_size, model_type, path)
    write_atomic(path, train_model(sentences, vocab_size, model_type, max_sentences, seed))
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    tokenizer = Tokenizer(data)
  except (RuntimeError, ValueError) as e:  # not a SentencePiece model, or other special ids
    raise ValueError(f'{path} is not a usable SentencePiece model: '
                     f'{str(e).splitlines()[0]}') from None
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(f'{path} has {tokenizer.vocab_size} pieces, not vocab_size={vocab_size}: '
                     f'set vocab_size={tokenizer.vocab_size}, or delete it to train a new one')
  logging.info('Loaded SentencePiece model %s (%d pieces)', path, tokenizer.vocab_size)
  return tokenizer
