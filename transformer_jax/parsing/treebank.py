"""Constituency trees: reading, writing, normalisation, and the embedded CRAFT treebank.

A `Tree` is a label and a list of children; a preterminal is a `Tree` whose only child
is a word (a `str`), e.g. `Tree('NN', ['cell'])`.

Normalisation (`normalize`) turns a raw CRAFT tree into what the parser learns and is
scored against:
  * the unlabelled root of `( (S ...) )` becomes `TOP`;
  * `-NONE-` preterminals (traces, null elements) are removed, then every constituent
    left without words (recursively);
  * function tags and co-indices are cut as EVALB does: a label ends before its first
    `-` or `=` (`NP-SBJ-1` -> `NP`, `NP=2` -> `NP`), except labels that start with `-`
    (`-LRB-`, `-RRB-`), which stay intact;
  * the document wrappers `TITLE`, `HEADING` and `CAPTION` are removed and their
    children take their place: they say where a sentence stands in the article, not
    how it is built, and cannot be told from the sentence's words (`CIT`, a citation
    span inside or around a sentence, is a bracketing of the words and stays);
  * a preterminal holding several words (4 in the corpus, e.g. `(NN Xpd TTD)`) becomes
    one preterminal per word with the same tag.

The embedded corpus (`data/craft/trees.txt.xz`, built by `scripts/build_treebank.py`)
holds the raw trees, one a line as `<PMID><TAB><tree>`; `split_trees(split)` gives the
normalised trees of 'train', 'dev' or 'test', split by whole articles (`split_of`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import lzma
import os
import re
from typing import Iterator, Union

DATA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'data', 'craft', 'trees.txt.xz')
ROOT = 'TOP'
TRACE = '-NONE-'
WRAPPERS = frozenset({'TITLE', 'HEADING', 'CAPTION'})
SPLITS = ('train', 'dev', 'test')
OPEN, LEAF, CLOSE = 'open', 'leaf', 'close'  # the events of `Tree.events`
# Articles sorted by PMID; the one at index i is held out when i % SPLIT_PERIOD is one of
# these (5 dev and 5 test articles of 65, spread over the corpus's years and journals).
SPLIT_PERIOD = 13
HELD_OUT = {6: 'dev', 12: 'test'}

_TOKEN = re.compile(r'\(|\)|[^\s()]+')
_FUNCTION_TAG = re.compile(r'[-=]')


@dataclasses.dataclass(frozen=True)
class Tree:
  """A constituent: `label` and children, either all subtrees or (for a preterminal)
  all words."""
  label: str
  children: list[Union['Tree', str]]

  def is_preterminal(self) -> bool:
    """Whether this node is a POS tag over words (one word once normalised)."""
    return bool(self.children) and isinstance(self.children[0], str)

  def events(self) -> Iterator[tuple[str, 'Tree']]:
    """Depth-first walk without recursion (predicted trees can be very deep): `(OPEN,
    node)` and later `(CLOSE, node)` around each constituent, `(LEAF, node)` for each
    preterminal. A node's children may be changed at its CLOSE."""
    stack: list[tuple['Tree', bool]] = [(self, False)]
    while stack:
      node, closing = stack.pop()
      if closing:
        yield CLOSE, node
      elif node.is_preterminal():
        yield LEAF, node
      else:
        yield OPEN, node
        stack.append((node, True))
        stack.extend([(child, False) for child in reversed(node.children)])

  def preterminals(self) -> list['Tree']:
    """The preterminals, left to right."""
    found, stack = [], [self]
    while stack:  # `events` without the constituents' events: 2x faster on the treebank
      node = stack.pop()
      if node.is_preterminal():
        found.append(node)
      else:
        stack.extend(reversed(node.children))
    return found

  def words(self) -> list[str]:
    """The words, left to right."""
    return [word for leaf in self.preterminals() for word in leaf.children]

  def tags(self) -> list[str]:
    """The POS tags of the (normalised) tree's words, left to right."""
    return [leaf.label for leaf in self.preterminals()]

  def __str__(self) -> str:
    """Penn bracketing on one line: `(TOP (S (NP (NN Cells)) (VP (VBP divide))))`."""
    pieces = []
    for event, node in self.events():
      if event == OPEN:
        pieces.append(f'({node.label}')
      elif event == LEAF:
        pieces.append(f'({node.label} {" ".join(node.children)})')
      else:
        pieces[-1] += ')'
    return ' '.join(pieces)


def parse_tree(text: str) -> Tree:
  """The tree of one Penn bracketing (`( (S ...) )` gives a root labelled ''); ValueError
  if it is not exactly one balanced bracketing."""
  tokens = _TOKEN.findall(text)
  stack: list[Tree] = []
  root = None
  for position, token in enumerate(tokens):
    if token == '(':
      label = tokens[position + 1] if position + 1 < len(tokens) else ''
      node = Tree('' if label in ('(', ')') else label, [])
      if stack:
        stack[-1].children.append(node)
      elif root is not None:
        raise ValueError(f'more than one tree in {text[:60]!r}')
      else:
        root = node
      stack.append(node)
    elif token == ')':
      if not stack:
        raise ValueError(f'unbalanced ")" in {text[:60]!r}')
      stack.pop()
    elif not stack:
      raise ValueError(f'word {token!r} outside brackets in {text[:60]!r}')
    elif tokens[position - 1] != '(':  # not the label just read
      stack[-1].children.append(token)
  if root is None or stack:
    raise ValueError(f'unbalanced or empty bracketing {text[:60]!r}')
  return root


def strip_function_tags(label: str) -> str:
  """`label` without function tags / indices, as EVALB cuts them (`-LRB-` stays)."""
  return label if label.startswith('-') else _FUNCTION_TAG.split(label, maxsplit=1)[0]


def _normalize_children(children: list[Union[Tree, str]]) -> list[Tree]:
  """Normalised subtrees replacing `children` (wrappers spliced, traces and empties gone)."""
  result = []
  for child in children:
    if child.label == TRACE:
      continue
    label = strip_function_tags(child.label)
    if child.is_preterminal():
      result.extend(Tree(label, [word]) for word in child.children)
      continue
    kept = _normalize_children(child.children)
    if label in WRAPPERS:
      result.extend(kept)
    elif kept:
      result.append(Tree(label, kept))
  return result


def normalize(tree: Tree) -> Tree:
  """The normalised tree (see the module docstring) under a `TOP` root."""
  return Tree(ROOT, _normalize_children(tree.children))


# ------------------------------------------------------------------ embedded corpus


@functools.lru_cache(maxsize=1)
def read_corpus(path: str = DATA_PATH) -> tuple[tuple[str, str], ...]:
  """(PMID, raw tree line) of every tree in the embedded corpus, in corpus order."""
  rows = []
  with lzma.open(path, 'rt', encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      article, tab, tree = line.rstrip('\n').partition('\t')
      if not tab or not tree:
        raise ValueError(f'{path}:{number}: expected "<PMID><TAB><tree>"')
      rows.append((article, tree))
  return tuple(rows)


def split_of(articles: list[str]) -> dict[str, str]:
  """The split of each article: by its index in PMID order (`SPLIT_PERIOD`, `HELD_OUT`)."""
  return {article: HELD_OUT.get(index % SPLIT_PERIOD, 'train')
          for index, article in enumerate(sorted(set(articles)))}


def split_articles(split: str, path: str = DATA_PATH) -> list[str]:
  """The PMIDs of the articles in `split`, sorted."""
  if split not in SPLITS:
    raise ValueError(f'unknown treebank split {split!r}; available: {", ".join(SPLITS)}')
  splits = split_of([article for article, _ in read_corpus(path)])
  return sorted(article for article, name in splits.items() if name == split)


def split_trees(split: str, path: str = DATA_PATH) -> list[Tree]:
  """The normalised trees of `split` ('train', 'dev', 'test'), in corpus order. Read once
  a process (the train split takes seconds): the trees are shared between calls, so copy
  one before changing it."""
  return list(_split_trees(split, path))


@functools.lru_cache(maxsize=None)
def _split_trees(split: str, path: str) -> tuple[Tree, ...]:
  articles = set(split_articles(split, path))
  with _no_garbage_collection():
    return tuple(normalize(parse_tree(tree)) for article, tree in read_corpus(path)
                 if article in articles)


@contextlib.contextmanager
def _no_garbage_collection():
  """Python's cycle collector paused: building a split's millions of tree nodes (which
  hold no cycles) otherwise spends two thirds of its time in repeated full collections."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()
