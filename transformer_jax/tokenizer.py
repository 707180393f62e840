"""Vocabularies: SentencePiece ids <-> text, for decoding and scoring (no TensorFlow).

Ids follow the flax examples/wmt convention: pad=0, eos=1, unk=2 and no bos (the
model uses 0 both as padding and as the decoder's start token).

  * `Tokenizer`: one joint SentencePiece model; encode (str -> ids, EOS appended) / decode.
  * `TwoModelVocabulary`: an imported Marian vocabulary (`transformer_jax.interop.marian`),
    with source and target SentencePiece models whose pieces share one id space; same
    encode / decode / pieces interface. `load_vocabulary(bytes)` reads either kind.

Training a vocabulary and tokenising in tf.data: `transformer_jax.training.vocabulary`.
"""

from __future__ import annotations

import base64
import json
from typing import Iterable, Sequence, Union

import sentencepiece as spm

from transformer_jax.model_config import EOS_ID, PAD_ID

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


class TwoModelVocabulary:
  """Source and target SentencePiece models sharing one id space, as Marian has them.

  Built from a JSON file (written by `transformer_jax.interop.marian`) holding both models
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

  @property
  def piece_ids(self) -> dict[str, int]:
    """Piece -> id of every piece the vocabulary maps."""
    return dict(self._ids)

  def pieces(self, ids: Iterable[int]) -> list[str]:
    """The subword string of each id ('<unk>' for ids without one)."""
    return [self._pieces.get(int(i), '<unk>') for i in ids]


Vocabulary = Union[Tokenizer, TwoModelVocabulary]


def load_vocabulary(data: bytes) -> Vocabulary:
  """A vocabulary from a file's bytes: a two-model JSON file, else a SentencePiece model."""
  return TwoModelVocabulary(data) if data.lstrip().startswith(b'{') else Tokenizer(data)
