"""Trees as bracket sequences (Vinyals et al. 2015, "Grammar as a Foreign Language").

`to_sequence` writes the children of a tree's `TOP` root depth first, each constituent
as an open symbol `(L`, its content and a labelled close symbol `)L`, each word as the
placeholder `XX` (POS tags are not predicted):

  (TOP (S (NP (NN Cells)) (VP (VBP divide)) (. .)))  ->  (S (NP XX )NP (VP XX )VP XX )S

The source side is the words joined by single spaces.

`from_sequence(sequence, words)` is the inverse for a model's output and always returns
a well-formed tree under `TOP` over exactly `words`, in order, with the repairs below
(applied left to right, deterministically); it reports whether any was needed:
  * a token that is neither `(L`, `)`/`)L` nor `XX` is skipped;
  * a close symbol closes the innermost open constituent whatever its label (a label
    that differs, or none, counts as a repair); one with nothing open is skipped;
  * an `XX` beyond the number of words is skipped;
  * constituents still open at the end are closed;
  * words with no `XX` are attached, one preterminal each, to the end of `TOP`;
  * constituents without words are removed (recursively).
Preterminals are labelled `tags[i]` when given (e.g. the gold tags, for scoring), else
`XX`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from transformer_jax.parsing.treebank import CLOSE, LEAF, OPEN, ROOT, Tree

WORD = 'XX'


def to_sequence(tree: Tree) -> str:
  """The bracket sequence of the children of `tree` (its root label is not written)."""
  tokens = []
  for event, node in tree.events():
    if node is not tree:
      tokens.append(WORD if event == LEAF else ('(' if event == OPEN else ')') + node.label)
  return ' '.join(tokens)


def _prune_empty(tree: Tree) -> bool:
  """Remove the constituents without words from `tree`; whether there were any."""
  pruned = False
  for event, node in tree.events():
    if event == CLOSE:
      kept = [child for child in node.children if child.children]
      pruned |= len(kept) < len(node.children)
      node.children = kept
  return pruned


def from_sequence(sequence: str, words: Sequence[str],
                  tags: Optional[Sequence[str]] = None) -> tuple[Tree, bool]:
  """(tree over `words` under TOP, whether a repair was needed) from a bracket sequence."""
  if tags is None:
    tags = [WORD] * len(words)
  elif len(tags) != len(words):
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
    elif token == WORD and used < len(words):
      stack[-1].children.append(Tree(tags[used], [words[used]]))
      used += 1
    else:
      repaired = True
  repaired |= len(stack) > 1 or used < len(words)
  root.children.extend(Tree(tags[i], [words[i]]) for i in range(used, len(words)))
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
