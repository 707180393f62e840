"""English constituency parsing as sequence-to-sequence (the paper's §6.3) on CRAFT trees.

  * `treebank`: `Tree`, reading and normalising Penn trees, the embedded CRAFT corpus
    and its split by articles;
  * `linearize`: trees <-> bracket sequences (`(S (NP XX XX )NP ... )S`, or with tags
    or the words themselves in the slots), with repair of malformed predictions;
  * `evalb`: labelled bracket P / R / F1 with EVALB's COLLINS.prm rules;
  * `symbols`: the target symbols in a vocabulary (the token table);
  * `constraints`: the tree automaton that makes every decoded output a tree (JAX);
  * `parser`: parsing sentences with a trained model; `tokenize`: raw text -> words.

`pairs(split, linearization)` gives the (source, target) strings a model learns from,
and `score_predictions` scores predicted sequences against the gold trees.
"""

from __future__ import annotations

import functools
from typing import Sequence

from transformer_jax.parsing import evalb, linearize, treebank
from transformer_jax.parsing.treebank import Tree


def pairs(split: str, linearization: str = 'xx') -> list[tuple[str, str]]:
  """(words joined by spaces, bracket sequence) of every tree of `split`, corpus order
  (computed once a process, like `treebank.split_trees`)."""
  return list(_pairs(split, linearization))


@functools.lru_cache(maxsize=None)
def _pairs(split: str, linearization: str) -> tuple[tuple[str, str], ...]:
  return tuple((' '.join(tree.words()), linearize.to_sequence(tree, linearization))
               for tree in treebank.split_trees(split))


def score_predictions(predictions: Sequence[str], sources: Sequence[str],
                      golds: Sequence[Tree]) -> tuple[dict[str, evalb.Scores], int]:
  """EVALB scores of predicted bracket sequences, each made a tree over its source's
  words (`linearize.from_sequence`), against the gold trees; and how many of the
  predictions needed a repair."""
  if not len(predictions) == len(sources) == len(golds):
    raise ValueError(f'{len(predictions)} predictions, {len(sources)} sources and '
                     f'{len(golds)} gold trees')
  trees, repaired = [], 0
  for prediction, source in zip(predictions, sources):
    tree, was_repaired = linearize.from_sequence(prediction, source.split())
    trees.append(tree)
    repaired += was_repaired
  return evalb.evaluate(golds, trees), repaired
