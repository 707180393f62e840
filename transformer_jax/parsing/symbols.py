"""The parser's target symbols in a vocabulary: which ids are brackets, word slots, pieces.

A parser's joint SentencePiece vocabulary holds every target symbol as one user-defined
piece (`vocabulary_symbols`): `▁(L` and `▁)L` for each constituent label L of the train
trees and, by linearisation (`linearize.LINEARIZATIONS`), the word slot `▁XX` ('xx'), one
`▁T` for each POS tag T ('tags'), or nothing ('words': the words are written with the
source's own pieces). `token_table` classifies every id of such a vocabulary for the tree
automaton (`constraints`) and for reading outputs back (`read_ids`):

  * SLOT: a word slot (`XX`, a tag, or for 'words' a piece that starts a word: `▁Cells`);
  * PIECE: for 'words', a piece that continues a word (`ase` of `▁kin` `ase`);
  * OPEN / CLOSE: a bracket, with its label's index in `TokenTable.labels`;
  * OTHER: anything else (padding, EOS, and the word pieces of 'xx' / 'tags').

`starts_word[id]`: the piece begins a source word (it starts with `▁` and is no bracket):
how the automaton counts a source's words and finds where each ends.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np

from transformer_jax.model_config import EOS_ID, PAD_ID
from transformer_jax.parsing import linearize, treebank

OTHER, SLOT, PIECE, OPEN, CLOSE = range(5)
SPACE = '▁'  # SentencePiece's word-boundary mark


@functools.lru_cache(maxsize=None)
def labels(split: str = 'train') -> tuple[str, ...]:
  """The constituent labels of `split`'s trees (not TOP), sorted."""
  return tuple(sorted({node.label for tree in treebank.split_trees(split)
                       for event, node in tree.events()
                       if event == treebank.OPEN and node is not tree}))


@functools.lru_cache(maxsize=None)
def tags(split: str = 'train') -> tuple[str, ...]:
  """The POS tags of `split`'s trees, sorted."""
  return tuple(sorted({tag for tree in treebank.split_trees(split) for tag in tree.tags()}))


def slot_symbols(linearization: str, split: str = 'train') -> tuple[str, ...]:
  """The word-slot tokens of a linearisation: ('XX',), the tags, or () for 'words'."""
  linearize.check_linearization(linearization)
  return {'xx': (linearize.WORD,), 'tags': tags(split), 'words': ()}[linearization]


def vocabulary_symbols(linearization: str = 'xx', split: str = 'train') -> tuple[str, ...]:
  """The target symbols as SentencePiece user-defined pieces, each one piece: the slots
  (`slot_symbols`), then `▁(L`, `▁)L` for every constituent label L of `split`, sorted."""
  return (tuple(SPACE + slot for slot in slot_symbols(linearization, split))
          + tuple(f'{SPACE}{bracket}{label}' for label in labels(split) for bracket in '()'))


@dataclasses.dataclass(frozen=True)
class TokenTable:
  """Per id of a vocabulary of V pieces: `kinds` [V] (OTHER, SLOT, PIECE, OPEN, CLOSE),
  `label_ids` [V] (a bracket's index in `labels`, else -1), `starts_word` [V] bool; and
  `names` [V], each id's symbol as a sequence writes it (`(NP`, `XX`, `NNS`; a word
  piece's text)."""
  linearization: str
  labels: tuple[str, ...]
  kinds: np.ndarray
  label_ids: np.ndarray
  starts_word: np.ndarray
  names: tuple[str, ...]

  @property
  def copies_words(self) -> bool:
    """Whether the targets spell the source's words ('words')."""
    return self.linearization == 'words'

  @property
  def slots(self) -> frozenset[str]:
    """The tokens `read_ids` writes for word slots (`linearize.from_sequence`'s `slots`)."""
    if self.copies_words:
      return frozenset({linearize.WORD})
    return frozenset(self.names[i] for i in np.flatnonzero(self.kinds == SLOT))


def token_table(pieces: Sequence[str], linearization: str) -> TokenTable:
  """The `TokenTable` of a vocabulary given as its pieces (id order), e.g.
  `vocab.pieces(range(vocab.vocab_size))`; ValueError if it lacks the linearisation's slot
  symbols or has no brackets (not a parser's vocabulary)."""
  linearize.check_linearization(linearization)
  names = tuple(piece.removeprefix(SPACE) for piece in pieces)
  brackets = [i for i, (piece, name) in enumerate(zip(pieces, names))
              if piece.startswith(SPACE) and name[:1] in '()' and len(name) > 1]
  label_names = tuple(sorted({names[i][1:] for i in brackets}))
  slots = set(slot_symbols(linearization)) if linearization != 'words' else set()
  missing = slots - {name for piece, name in zip(pieces, names) if piece.startswith(SPACE)}
  if missing or not brackets:
    raise ValueError(f'not a vocabulary of the {linearization!r} linearisation: it lacks '
                     f'{sorted(missing)[:3] if missing else "bracket symbols"}')
  kinds = np.full(len(pieces), OTHER, np.int8)
  label_ids = np.full(len(pieces), -1, np.int32)
  starts_word = np.array([piece.startswith(SPACE) for piece in pieces])
  for i in brackets:
    kinds[i] = OPEN if names[i][0] == '(' else CLOSE
    label_ids[i] = label_names.index(names[i][1:])
    starts_word[i] = False
  for i, piece in enumerate(pieces):
    if kinds[i] != OTHER or i in (PAD_ID, EOS_ID):
      continue
    if linearization == 'words':
      kinds[i] = SLOT if starts_word[i] else PIECE
    elif piece.startswith(SPACE) and names[i] in slots:
      kinds[i] = SLOT
  return TokenTable(linearization, label_names, kinds, label_ids, starts_word, names)


def vocabulary_table(vocab: Any, linearization: str) -> TokenTable:
  """`token_table` of a vocabulary object (`tokenizer.Vocabulary`)."""
  return token_table(vocab.pieces(range(vocab.vocab_size)), linearization)


def read_ids(ids: Sequence[int], table: TokenTable) -> str:
  """The bracket sequence of output ids (up to EOS) for `linearize.from_sequence`: brackets
  and slots by name, each word of a 'words' output as one `XX` (its continuing pieces
  dropped), anything else by its piece's text (which the repair skips)."""
  tokens = []
  for token in ids:
    token = int(token)
    if token in (EOS_ID, PAD_ID):
      break
    kind = table.kinds[token]
    if table.copies_words and kind in (SLOT, PIECE):
      if kind == SLOT:
        tokens.append(linearize.WORD)
    else:
      tokens.append(table.names[token] or '▁')
  return ' '.join(tokens)


def source_words(ids: Sequence[int], table: TokenTable) -> int:
  """How many words the automaton sees in source ids (EOS and padding excluded): pieces
  that start a word, the first piece always counting as one."""
  ids = [int(i) for i in ids if int(i) not in (EOS_ID, PAD_ID)]
  return sum(bool(table.starts_word[token]) or position == 0
             for position, token in enumerate(ids))
