"""Check `transformer_jax.parsing.evalb` against the real EVALB on a treebank split.

Writes the split's normalised gold trees and several "predictions" (each a tree over
the gold words, tagged with the gold tags as EVALB needs), runs the given `evalb`
binary with COLLINS.prm on each pair, and prints both scorers' P / R / F1 (all
sentences and <= 40 words) as a Markdown table. The predictions:
  * gold: the gold trees themselves;
  * gold, ADVP as PRT: every ADVP relabelled PRT (EQ_LABEL);
  * gold, raw labels: gold from the raw trees (function tags, traces kept; TOP root,
    wrappers removed), test the normalised trees: EVALB's own function-tag and trace
    handling against ours;
  * right-branching: `linearize.right_branching_sequence`;
  * edited: the gold sequence with 1-4 random edits (relabel, drop or insert a bracket
    pair, ADVP <-> PRT), then repaired by `linearize.from_sequence`;
  * garbage: random bracket / XX / junk tokens, repaired.

EVALB is a cross-check, not a dependency. Its C source ships in the PyPI wheel
allennlp==2.10.1; the CRAFT trees need larger buffers than its defaults (200 words,
5000 characters a line), e.g.:

  pip download --no-deps allennlp==2.10.1 -d /tmp/evalb && cd /tmp/evalb
  unzip -q allennlp-2.10.1-py3-none-any.whl 'allennlp/tools/EVALB/*'
  cd allennlp/tools/EVALB && sed -i -e 's/\\(MAX_SENT_LEN *\\)5000/\\1100000/' \\
    -e 's/\\(MAX_WORD_IN_SENT *\\)200/\\11000/' -e 's/\\(MAX_BRACKET_IN_SENT *\\)200/\\12000/' \\
    -e 's/\\(MAX_WORD_LEN *\\)100/\\11000/' -e 's/5000/100000/g' \\
    -e 's/match_j\\[200\\]/match_j[MAX_BRACKET_IN_SENT]/' evalb.c && gcc -w -o evalb evalb.c
  python scripts/evalb_crosscheck.py --evalb /tmp/evalb/allennlp/tools/EVALB/evalb \\
    --prm /tmp/evalb/allennlp/tools/EVALB/COLLINS.prm --split dev
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import tempfile
from typing import Callable

from transformer_jax.parsing import evalb, linearize, treebank
from transformer_jax.parsing.treebank import Tree

_SUMMARY = re.compile(r'Number of Error sentence\s*=\s*(\d+).*?Bracketing Recall\s*=\s*([\d.]+)'
                      r'.*?Bracketing Precision\s*=\s*([\d.]+).*?Bracketing FMeasure\s*=\s*'
                      r'([\d.]+)', re.S)
# The totals line after the per-sentence table: recall, precision, matched, gold, test.
_TOTALS = re.compile(r'^=+\n\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)\s+(\d+)', re.M)
_LABELS = ('NP', 'VP', 'PP', 'S', 'ADVP', 'PRT', 'ADJP', 'SBAR', 'NML')


def raw_gold(line: str) -> Tree:
  """A raw tree with its root labelled TOP and the wrappers spliced out, nothing else
  changed (function tags, traces and all)."""
  def splice(children: list) -> list:
    result = []
    for child in children:
      if isinstance(child, str) or child.is_preterminal():
        result.append(child)
      elif child.label in treebank.WRAPPERS:
        result.extend(splice(child.children))
      else:
        result.append(Tree(child.label, splice(child.children)))
    return result
  return Tree(treebank.ROOT, splice(treebank.parse_tree(line).children))


def edited(sequence: str, rng: random.Random) -> str:
  """`sequence` after 1-4 random bracket edits."""
  tokens = sequence.split()
  for _ in range(rng.randint(1, 4)):
    opens = [i for i, token in enumerate(tokens) if token.startswith('(')]
    edit = rng.choice(('relabel', 'drop', 'insert', 'advp'))
    if edit == 'insert' or not opens:
      i, j = sorted(rng.sample(range(len(tokens) + 1), 2)) if len(tokens) > 1 else (0, 1)
      label = rng.choice(_LABELS)
      tokens[i:j] = ['(' + label] + tokens[i:j] + [')' + label]
      continue
    start = rng.choice(opens)
    depth, end = 0, start
    for end in range(start, len(tokens)):
      depth += tokens[end].startswith('(') - tokens[end].startswith(')')
      if depth == 0:
        break
    if edit == 'drop':
      del tokens[end], tokens[start]
    else:
      label = ({'ADVP': 'PRT'}.get(tokens[start][1:], 'ADVP') if edit == 'advp'
               else rng.choice(_LABELS))
      tokens[start], tokens[end] = '(' + label, ')' + label
  return ' '.join(tokens)


def garbage(num_words: int, rng: random.Random) -> str:
  """A random token sequence of brackets, word slots and junk."""
  vocabulary = [f'({label}' for label in _LABELS] + [f'){label}' for label in _LABELS]
  vocabulary += ['XX'] * 6 + ['junk', ')']
  return ' '.join(rng.choice(vocabulary) for _ in range(rng.randint(0, 3 * num_words)))


def relabel(tree: Tree, old: str, new: str) -> Tree:
  """`tree` with every constituent labelled `old` relabelled `new`."""
  if tree.is_preterminal():
    return tree
  return Tree(new if tree.label == old else tree.label,
              [relabel(child, old, new) for child in tree.children])


def run_evalb(binary: str, prm: str, golds: list[Tree], tests: list[Tree],
              workdir: str) -> tuple[list[tuple[float, float, float, int]], str]:
  """EVALB's (recall, precision, F1, error sentences) for all and for <= 40 words, and
  its matched/gold/test bracket totals."""
  paths = [os.path.join(workdir, name) for name in ('gold.txt', 'test.txt')]
  for path, trees in zip(paths, (golds, tests)):
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(f'{tree}\n' for tree in trees)
  output = subprocess.run([binary, '-p', prm, *paths], check=True, capture_output=True,
                          text=True).stdout
  return ([(float(r), float(p), float(f), int(errors))
           for errors, r, p, f in _SUMMARY.findall(output)],
          '/'.join(_TOTALS.search(output).groups()))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--evalb', required=True, help='path of the compiled evalb binary')
  parser.add_argument('--prm', required=True, help='path of COLLINS.prm')
  parser.add_argument('--split', default='dev')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  articles = set(treebank.split_articles(args.split))
  raw = [line for article, line in treebank.read_corpus() if article in articles]
  golds = [treebank.normalize(treebank.parse_tree(line)) for line in raw]
  sequences = [linearize.to_sequence(tree) for tree in golds]

  def predicted(make: Callable[[int], str]) -> list[Tree]:
    return [linearize.from_sequence(make(i), gold.words(), gold.tags())[0]
            for i, gold in enumerate(golds)]

  cases = {
      'gold': (golds, golds),
      'gold, ADVP as PRT': (golds, [relabel(gold, 'ADVP', 'PRT') for gold in golds]),
      'gold, raw labels': ([raw_gold(line) for line in raw], golds),
      'right-branching': (golds, predicted(
          lambda i: linearize.right_branching_sequence(len(golds[i].words())))),
      'edited': (golds, predicted(lambda i: edited(sequences[i], rng))),
      'garbage': (golds, predicted(lambda i: garbage(len(golds[i].words()), rng))),
  }
  print(f'| {args.split} prediction | scorer | F1 all | P all | R all | F1 <=40 | P <=40 '
        '| R <=40 | matched/gold/test | EVALB errors |\n'
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  with tempfile.TemporaryDirectory() as workdir:
    for name, (gold_trees, test_trees) in cases.items():
      ours = evalb.evaluate(gold_trees, test_trees)
      theirs, totals = run_evalb(args.evalb, args.prm, gold_trees, test_trees, workdir)
      print(f'| {name} | ours | ' + ' | '.join(
          f'{s.f1:.2f} | {s.precision:.2f} | {s.recall:.2f}' for s in ours.values())
            + f' | {ours["all"].matched}/{ours["all"].gold}/{ours["all"].test} | |')
      print(f'| {name} | EVALB | ' + ' | '.join(
          f'{f:.2f} | {p:.2f} | {r:.2f}' for r, p, f, _ in theirs)
            + f' | {totals} | {theirs[0][3]} |')


if __name__ == '__main__':
  main()
