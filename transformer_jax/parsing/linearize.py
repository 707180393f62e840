"""Trees as bracket sequences (Vinyals et al. 2015, "Grammar as a Foreign Language").

`to_sequence` writes the children of a tree's `TOP` root depth first, each constituent
as an open symbol `(L`, its content and a labelled close symbol `)L`, and each word as
its `linearization` (`LINEARIZATIONS`) says:

  (TOP (S (NP (NNS Cells)) (VP (VBP divide)) (. .)))
    'xx'     (S (NP XX )NP (VP XX )VP XX )S             the paper's: a placeholder
    'tags'   (S (NP NNS )NP (VP VBP )VP . )S            its POS tag in the placeholder's place
    'words'  (S (NP Cells )NP (VP divide )VP . )S       the word itself (Choe & Charniak 2016)

The source side is the words joined by single spaces.

`from_sequence(sequence, words)` is the inverse for a model's output and always returns
a well-formed tree under `TOP` over exactly `words`, in order, with the repairs below
(applied left to right, deterministically); it reports whether any was needed:
  * a token that is neither `(L`, `)`/`)L` nor `XX` is skipped;
  * a close symbol closes the innermost open constituent whatever its label (a label
    that differs, or none, counts as a repair); one with nothing open is skipped;
  * a word slot (a token of `slots`: `XX`, or the tags) beyond the number of words is
    skipped;
  * constituents still open at the end are closed;
  * words with no `XX` are attached, one preterminal each, to the end of `TOP`;
  * constituents without words are removed (recursively).
Preterminals are labelled `tags[i]` when given (e.g. the gold tags, for scoring), else
by their slot token (`XX`, or the predicted tag; `XX` for words attached by the repair).
Outputs of the 'words' linearisation are read with one `XX` a word (`symbols.read_ids`).
"""

from __future__ import annotations

from typing import Collection, Optional, Sequence

from transformer_jax.parsing.treebank import CLOSE, LEAF, OPEN, ROOT, Tree

WORD = 'XX'
LINEARIZATIONS = ('xx', 'tags', 'words')


def check_linearization(name: str) -> str:
  """`name` if it is one of `LINEARIZATIONS`; ValueError naming them otherwise."""
  if name not in LINEARIZATIONS:
    raise ValueError(f'unknown linearization {name!r}; expected one of '
                     f'{", ".join(LINEARIZATIONS)}')
  return name


def _leaf(node: Tree, linearization: str) -> str:
  """How a preterminal is written: `XX`, its tag or its word."""
  return {'xx': WORD, 'tags': node.label, 'words': node.children[0]}[linearization]


def to_sequence(tree: Tree, linearization: str = 'xx') -> str:
  """The bracket sequence of the children of `tree` (its root label is not written)."""
  check_linearization(linearization)
  tokens = []
  for event, node in tree.events():
    if node is not tree:
      tokens.append(_leaf(node, linearization) if event == LEAF
                    else ('(' if event == OPEN else ')') + node.label)
  return ' '.join(tokens)


def _prune_empty(tree: Tree) -> bool:
  """Remove the constituents without words from `tree`; whether there were any."""
  pruned = False
  for event, node in tree.events():
    if event == CLOSE:
      kept = [child for child in node.children if child.children]
      pruned |= len(kept) < len(node.children)
      node.children[:] = kept
  return pruned


def from_sequence(sequence: str, words: Sequence[str], tags: Optional[Sequence[str]] = None,
                  slots: Collection[str] = (WORD,)) -> tuple[Tree, bool]:
  """(tree over `words` under TOP, whether a repair was needed) from a bracket sequence
  whose word slots are the tokens of `slots`."""
  if tags is not None and len(tags) != len(words):
    raise ValueError(f'{len(tags)} tags for {len(words)} words')
  root = Tree(ROOT, [])
  stack = [root]
  used = 0
  repaired = False
  for token in sequence.split():
    if token.startswith('(') and len(token) > 1:
      node = Tree(token[1:], [])
      stack[-1].children.append(node)
      stack.append(node)
    elif token.startswith(')') and len(stack) > 1:
      repaired |= token[1:] != stack.pop().label
    elif token in slots and used < len(words):
      stack[-1].children.append(Tree(token if tags is None else tags[used], [words[used]]))
      used += 1
    else:
      repaired = True
  repaired |= len(stack) > 1 or used < len(words)
  root.children.extend(Tree(WORD if tags is None else tags[i], [words[i]])
                       for i in range(used, len(words)))
  repaired |= _prune_empty(root)
  return root, repaired


def right_branching_sequence(num_words: int, root: str = 'S', label: str = 'NP') -> str:
  """The right-branching baseline over `num_words` words: every suffix of two or more
  words is a constituent, the whole sentence labelled `root`, the others `label` (by
  default the treebank's most frequent constituent label)."""
  if num_words < 2:
    return ' '.join([WORD] * num_words)
  labels = [root] + [label] * (num_words - 2)
  return ' '.join([f'({name} {WORD}' for name in labels] + [WORD]
                  + [')' + name for name in reversed(labels)])
