"""Parsing with a trained model: sentences -> bracket sequences -> trees, and F1 on gold trees.

A `Parser` is a translation model from words to `linearize` bracket sequences and the
token table of its linearisation (`symbols`); `load(workdir)` reads both. Decoding is
`inference`'s (sentences sorted by length, fixed batch shapes) under the tree automaton
(`constraints`: every output a tree over its words), or without it for ablation, when
outputs are made well-formed trees by `linearize.from_sequence` (repairs counted).
Decoding settings (`decoding.Search`): the paper's (§6.3: beam 21, alpha 0.3, at most input + 300
output tokens) and a cheaper greedy one with the same length limit, which training's
evaluation uses. Input: one sentence a line, whitespace-tokenised, `(` and `)` written
as the treebank's `-LRB-` / `-RRB-` (`sentence_words`).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional, Sequence

from jax.sharding import Mesh

from transformer_jax import decoding, inference
from transformer_jax.parsing import constraints, evalb, linearize, symbols, tokenize, treebank
from transformer_jax.parsing.treebank import Tree
from transformer_jax.workdir import Workdir


PAPER = decoding.Search(beam_size=21, alpha=0.3, max_extra_len=300)
GREEDY = decoding.Search(beam_size=1, alpha=0.3, max_extra_len=300)


def sentence_words(line: str) -> list[str]:
  """The words of a whitespace-tokenised sentence, `(` / `)` escaped as -LRB- / -RRB-."""
  return [''.join(tokenize.ESCAPES.get(char, char) for char in word) for word in line.split()]


class Parser(NamedTuple):
  """A trained parser: its model and vocabulary, and the vocabulary's `symbols.TokenTable`
  for the linearisation it was trained on."""
  model: inference.LoadedModel
  table: symbols.TokenTable

  @property
  def linearization(self) -> str:
    return self.table.linearization


def make_parser(model: inference.LoadedModel, linearization: str = 'xx') -> Parser:
  """The `Parser` of a loaded model trained on `linearization`; ValueError if its
  vocabulary lacks that linearisation's symbols."""
  return Parser(model, symbols.vocabulary_table(model.vocab, linearization))


def load(workdir: str, mesh: Optional[Mesh] = None) -> Parser:
  """The parser of a training workdir (`inference.load_model`; refused if it is not a
  parser's), its linearisation as its config.json says ('xx' if it says none);
  InferenceError if they do not fit."""
  model = inference.load_model(workdir, mesh, task='parsing')
  linearization = Workdir(workdir).saved_config().get('linearization', 'xx')
  try:
    return make_parser(model, linearization)
  except ValueError as e:
    raise inference.InferenceError(f'{workdir}: {e}') from None


class _SequenceReader:
  """What `inference.translate_lines` encodes and decodes with: sources by the vocabulary,
  outputs into bracket sequences (`symbols.read_ids`)."""

  def __init__(self, parser: Parser):
    self.vocab, self.table = parser.model.vocab, parser.table

  def encode(self, text: str) -> list[int]:
    return self.vocab.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return symbols.read_ids(ids, self.table)


class Parsed(NamedTuple):
  """Trees (None for a sentence without words) and how many outputs needed a repair."""
  trees: list[Optional[Tree]]
  repaired: int


def parse(parser: Parser, sentences: Sequence[Sequence[str]], search: decoding.Search = GREEDY,
          batch_size: int = 32, mesh: Optional[Mesh] = None, progress: bool = False,
          constrained: bool = True) -> Parsed:
  """Parse word lists: decode their bracket sequences, under the tree automaton
  (`constraints`) unless `constrained` is False, and make each a tree over its words
  (`linearize.from_sequence`: needed only without the automaton, or for a source cut to
  the model's length)."""
  step = parser.model.decoder
  if constrained:
    step = constraints.constrained(step, parser.table)
  decode_fn = inference.make_decode_fn(step, search, mesh)
  sequences = inference.translate_lines([' '.join(words) for words in sentences],
                                        lambda inputs: decode_fn(inputs).best,
                                        _SequenceReader(parser), batch_size=batch_size,
                                        max_source_len=parser.model.max_len, progress=progress)
  trees: list[Optional[Tree]] = []
  repaired = 0
  for words, sequence in zip(sentences, sequences):
    tree, was_repaired = (linearize.from_sequence(sequence, words, slots=parser.table.slots)
                          if words else (None, False))
    trees.append(tree)
    repaired += was_repaired
  return Parsed(trees, repaired)


class Evaluation(NamedTuple):
  """EVALB scores ('all', 'len<=40'), the parsed trees, the share repaired (%) and, for a
  parser that predicts tags, the share of words tagged as gold (%; else None)."""
  scores: dict[str, evalb.Scores]
  trees: list[Tree]
  repaired_percent: float
  tag_accuracy: Optional[float] = None


def tag_accuracy(golds: Sequence[Tree], tests: Sequence[Tree]) -> float:
  """Percent of the words (punctuation included) whose predicted tag is the gold one."""
  pairs = [(gold_tag, test_tag) for gold, test in zip(golds, tests)
           for gold_tag, test_tag in zip(gold.tags(), test.tags())]
  return 100.0 * sum(g == t for g, t in pairs) / max(len(pairs), 1)


def parse_and_score(parser: Parser, golds: Sequence[Tree], search: decoding.Search = GREEDY,
                    batch_size: int = 32, mesh: Optional[Mesh] = None,
                    progress: bool = False, constrained: bool = True) -> Evaluation:
  """Parse the words of gold trees and score the result with `evalb`."""
  parsed = parse(parser, [gold.words() for gold in golds], search, batch_size, mesh, progress,
                 constrained)
  tagged = parser.linearization == 'tags'
  return Evaluation(evalb.evaluate(golds, parsed.trees), parsed.trees,
                    100.0 * parsed.repaired / max(len(golds), 1),
                    tag_accuracy(golds, parsed.trees) if tagged else None)


def summary(result: Evaluation) -> dict[str, float]:
  """The scalars an evaluation logs: F1 (all, <= 40 words), the repaired share (%) and
  the tagging accuracy (%) where there is one."""
  values = {'f1': result.scores['all'].f1, 'f1_len40': result.scores['len<=40'].f1,
            'repaired_percent': result.repaired_percent}
  if result.tag_accuracy is not None:
    values['tag_accuracy'] = result.tag_accuracy
  return values


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
