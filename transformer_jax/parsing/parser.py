"""Parsing with a trained model: sentences -> bracket sequences -> trees, and F1 on gold trees.

The model is a translation model from words to `linearize` bracket sequences; decoding is
`inference`'s (sentences sorted by length, fixed batch shapes), then every output is made
a well-formed tree over its sentence's words (`linearize.from_sequence`, repairs counted).
Decoding settings (`decoding.Search`): the paper's (§6.3: beam 21, alpha 0.3, at most input + 300
output tokens) and a cheaper greedy one with the same length limit, which training's
evaluation uses. Input: one sentence a line, whitespace-tokenised, `(` and `)` written
as the treebank's `-LRB-` / `-RRB-` (`sentence_words`).
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple, Optional, Sequence

from jax.sharding import Mesh

from transformer_jax import decoding, inference
from transformer_jax.parsing import evalb, linearize, treebank
from transformer_jax.parsing.treebank import Tree


PAPER = decoding.Search(beam_size=21, alpha=0.3, max_extra_len=300)
GREEDY = decoding.Search(beam_size=1, alpha=0.3, max_extra_len=300)
_ESCAPES = {'(': '-LRB-', ')': '-RRB-'}


@functools.lru_cache(maxsize=None)
def vocabulary_symbols(split: str = 'train') -> tuple[str, ...]:
  """The target symbols as SentencePiece user-defined pieces, each one piece: '▁XX', then
  '▁(L', '▁)L' for every constituent label L of `split`'s trees, labels sorted."""
  labels = sorted({node.label for tree in treebank.split_trees(split)
                   for event, node in tree.events() if event == treebank.OPEN and node is not tree})
  return (f'▁{linearize.WORD}',) + tuple(f'▁{bracket}{label}' for label in labels
                                         for bracket in '()')


def sentence_words(line: str) -> list[str]:
  """The words of a whitespace-tokenised sentence, `(` / `)` escaped as -LRB- / -RRB-."""
  return [''.join(_ESCAPES.get(char, char) for char in word) for word in line.split()]


class Parsed(NamedTuple):
  """Trees (None for a sentence without words) and how many outputs needed a repair."""
  trees: list[Optional[Tree]]
  repaired: int


def parse(model: inference.LoadedModel, sentences: Sequence[Sequence[str]],
          search: decoding.Search = GREEDY, batch_size: int = 32, mesh: Optional[Mesh] = None,
          progress: bool = False) -> Parsed:
  """Parse word lists: decode their bracket sequences and make each a tree over its words."""
  decode_fn = inference.make_decode_fn(model.decoder, search, mesh)
  sequences = inference.translate_lines([' '.join(words) for words in sentences],
                                        lambda inputs: decode_fn(inputs).best, model.vocab,
                                        batch_size=batch_size, max_source_len=model.max_len,
                                        progress=progress)
  trees: list[Optional[Tree]] = []
  repaired = 0
  for words, sequence in zip(sentences, sequences):
    tree, was_repaired = linearize.from_sequence(sequence, words) if words else (None, False)
    trees.append(tree)
    repaired += was_repaired
  return Parsed(trees, repaired)


class Evaluation(NamedTuple):
  """EVALB scores ('all', 'len<=40'), the parsed trees and the share repaired (%)."""
  scores: dict[str, evalb.Scores]
  trees: list[Tree]
  repaired_percent: float


def parse_and_score(model: inference.LoadedModel, golds: Sequence[Tree],
                    search: decoding.Search = GREEDY, batch_size: int = 32,
                    mesh: Optional[Mesh] = None, progress: bool = False) -> Evaluation:
  """Parse the words of gold trees and score the result with `evalb`."""
  parsed = parse(model, [gold.words() for gold in golds], search, batch_size, mesh, progress)
  return Evaluation(evalb.evaluate(golds, parsed.trees), parsed.trees,
                    100.0 * parsed.repaired / max(len(golds), 1))


def summary(result: Evaluation) -> dict[str, float]:
  """The scalars an evaluation logs: F1 (all, <= 40 words) and the repaired share (%)."""
  return {'f1': result.scores['all'].f1, 'f1_len40': result.scores['len<=40'].f1,
          'repaired_percent': result.repaired_percent}


def write_trees(path: str, trees: Sequence[Optional[Tree]]) -> None:
  """One bracketed tree a line (an empty line for None)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{"" if tree is None else tree}\n' for tree in trees)


def split_name(config: Any, role: str) -> str:
  """The treebank split ('train', 'dev', 'test') config.<role>_split names; ValueError
  naming the key otherwise (or if config.dataset is not 'craft', the embedded treebank)."""
  if config.dataset != 'craft':
    raise ValueError(f"config.dataset={config.dataset!r}: the parsing task reads the embedded "
                     "treebank, dataset='craft'")
  name = config[f'{role}_split']
  if name not in treebank.SPLITS:
    raise ValueError(f'config.{role}_split={name!r}: the treebank has splits '
                     f'{", ".join(treebank.SPLITS)}')
  return name
