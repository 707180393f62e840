"""Joint SentencePiece vocabulary: training (cached, atomic) and tokenisation.

Ids follow the flax examples/wmt convention: pad=0, eos=1, unk=2 and no bos (the
model uses 0 both as padding and as the decoder's start token).

  * `load_or_train(path, sentences, ...)`: the model bytes at `path`, training
    them first if absent. Training writes a temporary file and renames it with
    `overwrite=False`, so concurrent hosts never see a partial file and all end
    up using the first model written.
  * `Tokenizer`: Python-side encode (str → ids, EOS appended) / decode.
  * `Tokenizer.tf_tokenizer()`: the same model as a tensorflow-text
    `SentencepieceTokenizer`; `tf_encoders()` (both vocabulary kinds): the source and
    target encoders for tokenising inside a tf.data pipeline.
  * `TwoModelVocabulary`: an imported Marian vocabulary (`transformer_jax.marian`), with
    source and target SentencePiece models whose pieces share one id space; same
    encode / decode / pieces interface. `load_vocabulary(bytes)` reads either kind.

TensorFlow (tf.io.gfile for gs:// paths, tensorflow-text) is imported only by the
functions that need it, so decoding and the translate CLI run without it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import uuid
from typing import Any, Iterable, Sequence, Union

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
    return _tf_sentencepiece(self.model_proto, alpha, nbest_size)

  def tf_encoders(self, alpha: float = 0.0, nbest_size: int = -1) -> tuple[Any, Any]:
    """(source, target) in-graph encoders: string tensor [N] -> ragged ids [N, None], no
    EOS; one shared model (see `tf_tokenizer` for the sampling options)."""
    encode = self.tf_tokenizer(alpha, nbest_size).tokenize
    return encode, encode


def _tf_sentencepiece(model: bytes, alpha: float, nbest_size: int,
                      out_type: Any = None) -> 'tftxt.SentencepieceTokenizer':
  """tensorflow-text SentencePiece tokenizer of `model` (ids, or `out_type`, e.g. strings)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_text as tftxt  # pylint: disable=g-import-not-at-top
  sampling = dict(nbest_size=nbest_size, alpha=alpha) if alpha > 0 else {}
  return tftxt.SentencepieceTokenizer(model=model, add_eos=False, out_type=out_type or tf.int32,
                                      **sampling)


class TwoModelVocabulary:
  """Source and target SentencePiece models sharing one id space, as Marian has them.

  Built from a JSON file (written by `transformer_jax.marian`) holding both models
  (base64), Marian's `vocab.json` text (piece -> Marian id) and `marian_ids`, the Marian id
  of each of this library's ids: pad and start 0, EOS 1 as everywhere here. Encoding splits
  text into pieces with the source model (a leading `>>xx<<` target-language code is kept
  as one piece, as Transformers' MarianTokenizer does), maps them to ids (unknown pieces to
  `<unk>`) and appends EOS; decoding joins the pieces with the target model (then, like
  MarianTokenizer, turns the '▁' of pieces it does not know into spaces).
  """

  def __init__(self, data: bytes):
    try:
      value = json.loads(data)
      self.source_model = base64.b64decode(value['source_spm'], validate=True)
      self.target_model = base64.b64decode(value['target_spm'], validate=True)
      self.vocab_json, self.marian_ids = value['vocab_json'], list(value['marian_ids'])
      marian_vocab = json.loads(self.vocab_json)
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'not a two-model vocabulary file ({type(e).__name__}: {e})') from None
    ours = {marian: i for i, marian in enumerate(self.marian_ids)}
    self._ids = {piece: ours[m] for piece, m in marian_vocab.items() if m in ours}
    self._pieces = {i: piece for piece, i in self._ids.items()}
    if '<unk>' not in self._ids:
      raise ValueError('the vocabulary has no <unk> piece')
    self._source = spm.SentencePieceProcessor(model_proto=self.source_model)
    self._target = spm.SentencePieceProcessor(model_proto=self.target_model)

  @property
  def vocab_size(self) -> int:
    """Number of ids (the model's embedding rows)."""
    return len(self.marian_ids)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` followed by EOS."""
    code = []
    if text.startswith('>>') and (end := text.find('<<')) != -1:
      code, text = [text[:end + 2]], text[end + 2:]
    unk = self._ids['<unk>']
    return [self._ids.get(p, unk) for p in code + self._source.encode(text, out_type=str)
            ] + [EOS_ID]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOS; pad ids are ignored."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    text = self._target.decode_pieces(self.pieces(i for i in ids if i != PAD_ID))
    return text.replace('\u2581', ' ').strip()  # pieces only the source model knows

  def pieces(self, ids: Iterable[int]) -> list[str]:
    """The subword string of each id ('<unk>' for ids without one)."""
    return [self._pieces.get(int(i), '<unk>') for i in ids]

  def tf_encoders(self, alpha: float = 0.0, nbest_size: int = -1) -> tuple[Any, Any]:
    """(source, target) in-graph encoders for training: string tensor [N] -> ragged ids
    [N, None], no EOS. Sources split with the source model (a leading `>>xx<<` code kept as
    one piece, as `encode` does), targets with the target model, as Marian trains; pieces
    map to ids through the shared vocabulary (unknown: `<unk>`). Sampling as
    `Tokenizer.tf_tokenizer`."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(list(self._ids), list(self._ids.values()),
                                            tf.string, tf.int32), self._ids['<unk>'])

    def encoder(model: bytes, codes: bool) -> Any:
      sp = _tf_sentencepiece(model, alpha, nbest_size, out_type=tf.string)

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
    return encoder(self.source_model, True), encoder(self.target_model, False)


Vocabulary = Union[Tokenizer, TwoModelVocabulary]


def load_vocabulary(data: bytes) -> Vocabulary:
  """A vocabulary from a file's bytes: a two-model JSON file, else a SentencePiece model."""
  return TwoModelVocabulary(data) if data.lstrip().startswith(b'{') else Tokenizer(data)


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
                  seed: int = 0) -> 'Vocabulary':
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
    tokenizer = load_vocabulary(data)
  except (RuntimeError, ValueError) as e:  # not a SentencePiece model, or other special ids
    raise ValueError(f'{path} is not a usable SentencePiece model: '
                     f'{str(e).splitlines()[0]}') from None
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(f'{path} has {tokenizer.vocab_size} pieces, not vocab_size={vocab_size}: '
                     f'set vocab_size={tokenizer.vocab_size}, or delete it to train a new one')
  logging.info('Loaded SentencePiece model %s (%d pieces)', path, tokenizer.vocab_size)
  return tokenizer
