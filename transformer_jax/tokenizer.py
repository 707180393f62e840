"""Vocabularies: SentencePiece ids <-> text, for decoding and scoring (no TensorFlow).

Ids follow the flax examples/wmt convention: pad=0, eos=1, unk=2 and no bos (the
model uses 0 both as padding and as the decoder's start token).

  * `Tokenizer`: one joint SentencePiece model; encode (str -> ids, EOS appended) / decode.
  * `TwoModelVocabulary`: an imported Marian vocabulary (`transformer_jax.interop.marian`),
    with source and target SentencePiece models whose pieces share one id space.
    `load_vocabulary(bytes)` reads either kind.

Both have one interface: `encode(text)` a source, `encode_target(text)` a target (what
scoring and training's targets use; the target model for a two-model vocabulary),
`decode(ids)` an output; `segment(texts, target=..., sampling=...)` many at once, sampled
(subword regularisation) reproducibly for a seed; `spans(text)` and `decode_spans(ids)`
say which characters of the text each token covers (for word alignments).

Training a vocabulary and tokenising in tf.data: `transformer_jax.training.vocabulary`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from typing import Any, Iterable, Optional, Sequence, Union

import sentencepiece as spm

from transformer_jax.model_config import EOS_ID, PAD_ID

UNK_ID = 2

# Characters that show nothing, which SentencePiece drops or maps to <unk> (a regex class's
# contents): controls and Unicode's default-ignorable code points (zero-width spaces and
# joiners, BOM, soft hyphen, bidi and variation marks, ...).
INVISIBLE = r'\p{Cc}\p{Default_Ignorable_Code_Point}'
# [begin, end) characters of a text that one token covers.
Span = tuple[int, int]
# SentencePiece's random generator is one per process: seeded under this lock for a call.
_SAMPLING_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Subword regularisation (Kudo 2018): SentencePiece samples a segmentation instead of
  taking the best one. Unigram models sample among the `nbest_size` best (-1: all) with
  inverse temperature `alpha`; BPE models drop merges with probability `alpha`. The
  samples of one call are a function of its texts and `seed` alone."""
  alpha: float
  nbest_size: int = -1
  seed: int = 0  # SentencePiece's generator is seeded with it modulo 2**32 - 1


def _sentencepiece(sp: spm.SentencePieceProcessor, texts: Sequence[str], out_type: Any,
                   sampling: Optional[Sampling]) -> list[list[Any]]:
  """`sp` segmentations of `texts` (ids or pieces, no EOS): the best, or sampled
  reproducibly (SentencePiece's generator seeded with `sampling.seed`, one thread)."""
  if sampling is None:
    return sp.encode(list(texts), out_type=out_type)
  with _SAMPLING_LOCK:
    spm.set_random_generator_seed(sampling.seed % (2 ** 32 - 1))  # 2**32 - 1: "unseeded"
    return sp.encode(list(texts), out_type=out_type, enable_sampling=True,
                     alpha=sampling.alpha, nbest_size=sampling.nbest_size, num_threads=1)


def _char_spans(text: str, pieces: Any, shift: int = 0) -> list[Span]:
  """SentencePiece proto pieces' [begin, end) byte offsets into `text`'s UTF-8 -> character
  spans, plus `shift`."""
  chars = [i for i, c in enumerate(text) for _ in c.encode('utf-8')] + [len(text)]
  return [(chars[p.begin] + shift, chars[p.end] + shift) for p in pieces]


def _until_eos(ids: Iterable[int]) -> list[int]:
  """`ids` up to the first EOS, without padding."""
  ids = [int(i) for i in ids]
  if EOS_ID in ids:
    ids = ids[:ids.index(EOS_ID)]
  return [i for i in ids if i != PAD_ID]


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
    """Token ids of the source `text` followed by EOS."""
    return self._sp.encode(text) + [EOS_ID]

  def encode_target(self, text: str) -> list[int]:
    """Token ids of the target `text` followed by EOS (the one model: as `encode`)."""
    return self.encode(text)

  def segment(self, texts: Sequence[str], *, target: bool = False,
              sampling: Optional[Sampling] = None) -> list[list[int]]:
    """Token ids of each of `texts` (no EOS): the best segmentation, or sampled."""
    return _sentencepiece(self._sp, texts, int, sampling)

  def spans(self, text: str) -> list[Span]:
    """The characters of the source `text` each token of `encode(text)` but EOS covers
    (SentencePiece's alignment to the text as given; dropped characters fall in a
    neighbouring token's span)."""
    return _char_spans(text, self._sp.encode(text, out_type='proto').pieces)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOS; pad ids are ignored."""
    return self._sp.decode(_until_eos(ids))

  def decode_spans(self, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """`decode(ids)` and the characters of it that each token before the first EOS
    (padding dropped) produced."""
    proto = self._sp.decode(_until_eos(ids), out_type='proto')
    return proto.text, _char_spans(proto.text, proto.pieces)

  def pieces(self, ids: Sequence[int]) -> list[str]:
    """The subword string of each id (for labelling plots)."""
    return [self._sp.id_to_piece(int(i)) for i in ids]


class TwoModelVocabulary:
  """Source and target SentencePiece models sharing one id space, as Marian has them.

  Built from a JSON file (written by `transformer_jax.interop.marian`) holding both models
  (base64), Marian's `vocab.json` text (piece -> Marian id) and `marian_ids`, the Marian id
  of each of this library's ids: pad and start 0, EOS 1 as everywhere here. Encoding a
  source splits it into pieces with the source model (a leading `>>xx<<` target-language
  code is kept as one piece, as Transformers' MarianTokenizer does), a target with the
  target model (MarianTokenizer's `text_target=`), maps them to ids (unknown pieces to
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

  @staticmethod
  def _code(text: str) -> tuple[str, str]:
    """(a leading `>>xx<<` target-language code, or '', and the rest of `text`)."""
    if text.startswith('>>') and (end := text.find('<<')) != -1:
      return text[:end + 2], text[end + 2:]
    return '', text

  def segment(self, texts: Sequence[str], *, target: bool = False,
              sampling: Optional[Sampling] = None) -> list[list[int]]:
    """Token ids of each of `texts` (no EOS): sources split by the source model after a
    leading `>>xx<<` code (one piece), targets by the target model; the best
    segmentation, or sampled. Pieces the shared vocabulary lacks are `<unk>`."""
    split = [('', text) if target else self._code(text) for text in texts]
    pieces = _sentencepiece(self._target if target else self._source,
                            [rest for _, rest in split], str, sampling)
    unk = self._ids['<unk>']
    return [[self._ids.get(p, unk) for p in [code] * bool(code) + rest]
            for (code, _), rest in zip(split, pieces)]

  def encode(self, text: str) -> list[int]:
    """Token ids of the source `text` (source model) followed by EOS."""
    return self.segment([text])[0] + [EOS_ID]

  def encode_target(self, text: str) -> list[int]:
    """Token ids of the target `text` (target model) followed by EOS."""
    return self.segment([text], target=True)[0] + [EOS_ID]

  def spans(self, text: str) -> list[Span]:
    """The characters of the source `text` each token of `encode(text)` but EOS covers."""
    code, rest = self._code(text)
    return [(0, len(code))] * bool(code) + _char_spans(
        rest, self._source.encode(rest, out_type='proto').pieces, len(code))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` up to the first EOS; pad ids are ignored."""
    return self.decode_spans(ids)[0]

  def decode_spans(self, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """`decode(ids)` and the characters of it that each token before the first EOS
    (padding dropped) produced."""
    proto = self._target.decode(self.pieces(_until_eos(ids)), out_type='proto')
    text = proto.text.replace('\u2581', ' ')  # pieces only the source model knows
    lead, kept = len(text) - len(text.lstrip()), text.strip()
    clip = lambda i: min(max(i - lead, 0), len(kept))  # noqa: E731
    return kept, [(clip(b), clip(e)) for b, e in _char_spans(proto.text, proto.pieces)]

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
