"""Labelled bracket precision / recall / F1 as EVALB computes them with COLLINS.prm.

A re-implementation of EVALB (Sekine & Collins 1997) for `Tree`s, checked against the
C program on the CRAFT dev set (docs/parsing_evalb_check.md). COLLINS.prm's rules:
  * preterminals tagged `-NONE-` or punctuation (`,` `:` `` `` `` `''` `.`) are deleted
    with their words before spans are counted (DELETE_LABEL);
  * a constituent's label is cut before its first `-` or `=` (`NP-SBJ` -> `NP`);
    constituents labelled `TOP`, or left spanning no word, are not counted;
  * `ADVP` and `PRT` are the same label (EQ_LABEL);
  * a test constituent matches a gold one with the same span and label, each used once
    (n gold and m test copies of one labelled span give min(n, m) matches);
  * a sentence's length counts its words except `-NONE-` (DELETE_LABEL_FOR_LENGTH),
    punctuation included; the `<= 40` figures are over sentences of at most 40 words;
  * a sentence left without words after deletion is skipped (no brackets counted).
Totals are summed over sentences (not averaged); F1 = 2PR / (P + R).

The test tree is scored with the gold tree's POS tags: the parser predicts no tags
(its preterminals are `XX`), and EVALB decides punctuation by each file's own tags, so
this is EVALB run on a test file whose tags were copied from the gold file. Preterminals
themselves are never brackets, so their labels change nothing else.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Optional, Sequence

from transformer_jax.parsing.treebank import LEAF, OPEN, TRACE, Tree

DELETE_LABELS = frozenset({'TOP', TRACE, ',', ':', '``', "''", '.'})
LENGTH_DELETE_LABELS = frozenset({TRACE})
EQUIVALENT_LABELS = {'PRT': 'ADVP'}
CUTOFF_LENGTH = 40
_CUT = re.compile(r'[-=]')


@dataclasses.dataclass
class Scores:
  """Bracket counts summed over sentences, with recall / precision / F1 in percent."""
  sentences: int = 0
  skipped: int = 0
  gold: int = 0
  test: int = 0
  matched: int = 0

  @property
  def recall(self) -> float:
    return 100.0 * self.matched / self.gold if self.gold else 0.0

  @property
  def precision(self) -> float:
    return 100.0 * self.matched / self.test if self.test else 0.0

  @property
  def f1(self) -> float:
    total = self.recall + self.precision
    return 2 * self.recall * self.precision / total if total else 0.0

  def __str__(self) -> str:
    return (f'F1 {self.f1:.2f} (P {self.precision:.2f}, R {self.recall:.2f}; '
            f'{self.matched}/{self.test}/{self.gold} matched/test/gold brackets, '
            f'{self.sentences} sentences, {self.skipped} skipped)')


def evalb_label(label: str) -> str:
  """The label EVALB compares: cut before the first '-' or '=', PRT read as ADVP."""
  label = _CUT.split(label, maxsplit=1)[0]
  return EQUIVALENT_LABELS.get(label, label)


def brackets(tree: Tree, tags: Sequence[str]) -> collections.Counter:
  """Multiset of the (label, start, end) spans EVALB counts in `tree`, whose k-th
  preterminal is taken to be tagged `tags[k]`; word positions skip deleted words."""
  spans: collections.Counter = collections.Counter()
  position, preterminal, starts = 0, 0, []
  for event, node in tree.events():
    if event == LEAF:
      position += tags[preterminal] not in DELETE_LABELS
      preterminal += 1
    elif event == OPEN:
      starts.append(position)
    else:
      start, label = starts.pop(), evalb_label(node.label)
      if position > start and label not in DELETE_LABELS:
        spans[label, start, position] += 1
  return spans


def length(gold: Tree) -> int:
  """The sentence length EVALB uses for the cut-off: words not tagged -NONE-."""
  return sum(tag not in LENGTH_DELETE_LABELS for tag in gold.tags())


def sentence_counts(gold: Tree, test: Tree) -> Optional[tuple[int, int, int]]:
  """(gold, test, matched) bracket counts of one sentence, or None when EVALB skips it.

  `test`'s words must be `gold`'s words without traces; ValueError otherwise.
  """
  leaves = gold.preterminals()
  gold_tags = [leaf.label for leaf in leaves]
  kept = [leaf for leaf in leaves if leaf.label not in LENGTH_DELETE_LABELS]
  words = [word for leaf in kept for word in leaf.children]
  if test.words() != words:
    raise ValueError(f'test words {" ".join(test.words())[:80]!r} differ from gold words '
                     f'{" ".join(words)[:80]!r}')
  if all(leaf.label in DELETE_LABELS for leaf in kept):
    return None
  gold_spans = brackets(gold, gold_tags)
  test_spans = brackets(test, [leaf.label for leaf in kept])
  return (sum(gold_spans.values()), sum(test_spans.values()),
          sum((gold_spans & test_spans).values()))


def evaluate(golds: Sequence[Tree], tests: Sequence[Tree]) -> dict[str, Scores]:
  """EVALB's summary over aligned gold and test trees: {'all': ..., 'len<=40': ...}."""
  if len(golds) != len(tests):
    raise ValueError(f'{len(golds)} gold trees but {len(tests)} test trees')
  short = f'len<={CUTOFF_LENGTH}'
  results = {'all': Scores(), short: Scores()}
  for gold, test in zip(golds, tests):
    counts = sentence_counts(gold, test)
    for key, scores in results.items():
      if key == short and length(gold) > CUTOFF_LENGTH:
        continue
      scores.sentences += 1
      if counts is None:
        scores.skipped += 1
      else:
        scores.gold += counts[0]
        scores.test += counts[1]
        scores.matched += counts[2]
  return results
