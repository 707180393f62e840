"""Rebuild the embedded CRAFT treebank (constituency parsing) from the shared treebank folder.

Reads `<treebank>/trees/<PMID>.tree` (one Penn tree a line; blank lines skipped),
`<treebank>/article_licences.tsv` (PMID<TAB>licence) and `<treebank>/copyright/` (each
article's citation and licence statement), and writes

  * `<out>/trees.txt.xz`: every raw tree, unchanged, as `<PMID><TAB><tree>`, articles in
    PMID order (xz, reproducible bytes for the same liblzma);
  * `<out>/PROVENANCE.md`: corpus, licence, processing, the split with article, sentence
    and word counts, and the article list with each article's citation and licence.

  python scripts/build_treebank.py --treebank ../shared/treebank --out transformer_jax/data/craft
"""

from __future__ import annotations

import argparse
import collections
import lzma
import os
import re

from transformer_jax.parsing import treebank

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The licence each article's copyright statement names (all three allow reuse with
# attribution; the PLoS Open-Access License is PLoS's early name for CC BY terms).
_LICENCE_STATEMENT = re.compile(
    r'Creative Commons Attribution License|Creative Commons Public Domain declaration'
    r'|Public Library of Science Open-Access License')

_HEADER = """\
# Embedded treebank: CRAFT constituency trees (openly licensed articles)

Gold English constituency trees used by `transformer_jax.parsing` (issue 22, the paper's
§6.3 task on an openly licensed treebank instead of the WSJ Penn Treebank).

## Source

* Corpus: **CRAFT** (Colorado Richly Annotated Full-Text corpus) **v5.0.2**, Penn
  Treebank-style syntactic annotation of full-text biomedical articles from the PubMed
  Central open-access subset; repository `https://github.com/UCDenver-ccp/CRAFT`,
  commit `2abe82b8`, path `structural-annotation/treebank/penn/<PMID>.tree`.
* Annotation licence: **Creative Commons Attribution 3.0** (CC BY 3.0,
  http://creativecommons.org/licenses/by/3.0/), © the CRAFT authors (University of
  Colorado Anschutz Medical Campus). The trees are redistributed here unchanged apart
  from being concatenated into one compressed file.
* Only the {n_articles} articles whose text is CC BY ({n_ccby}) or public domain ({n_pd}) are
  included; each article's licence statement is summarised in the table below (its full
  text: the article's PMC page). Articles whose text may only be copied verbatim, or
  that state no licence, are left out.

## Files

`trees.txt.xz`: one raw tree a line, `<PMID><TAB><tree>`, articles in PMID order, each
article's trees in document order ({n_trees} trees). The trees keep CRAFT's conventions
(`( (S ...) )` roots, function tags, `-NONE-` traces, TITLE / HEADING / CAPTION / CIT);
`transformer_jax.parsing.treebank.normalize` documents what the parser is trained and
scored on.

## Split (by whole articles)

Articles sorted by PMID; the article at index *i* (from 0) is in dev when *i* mod
{period} = {dev_index}, in test when *i* mod {period} = {test_index}, else in train. Words are
counted after normalisation (no traces).

| split | articles | sentences | words | sentences ≤ 40 words |
|-------|---------:|----------:|------:|---------------------:|
"""

_ARTICLES = """
## Articles

| PMID | split | trees | citation | first author | PMC | licence | the article's statement names |
|------|-------|------:|----------|--------------|-----|---------|-------------------------------|
"""

_REBUILD = """
## Rebuild

```
python scripts/build_treebank.py --treebank ../shared/treebank --out transformer_jax/data/craft
```
"""


def read_trees(treebank_dir: str, article: str) -> list[str]:
  """The non-blank tree lines of one article, stripped."""
  with open(os.path.join(treebank_dir, 'trees', f'{article}.tree'), encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def read_citation(treebank_dir: str, article: str) -> tuple[str, str, str, str]:
  """(journal citation, first author, PMC URL, licence named) from the copyright file."""
  path = os.path.join(treebank_dir, 'copyright', f'{article}.copyright')
  with open(path, encoding='utf-8') as f:
    lines = [line.strip() for line in f]
  pubmed = next(i for i, line in enumerate(lines) if line.startswith('PubMed ID'))
  first_author = next(line for line in lines[pubmed + 1:] if line)
  url = next(line for line in lines if line.startswith('http'))
  licence = _LICENCE_STATEMENT.search('\n'.join(lines))
  if licence is None:
    raise ValueError(f'{path}: no known licence statement')
  return lines[0], first_author, url, licence.group()


def read_licences(treebank_dir: str) -> dict[str, str]:
  """PMID -> licence code ('CC-BY' or 'PD')."""
  with open(os.path.join(treebank_dir, 'article_licences.tsv'), encoding='utf-8') as f:
    return dict(line.rstrip('\n').split('\t') for line in f if line.strip())


def write_corpus(path: str, rows: list[tuple[str, str]]) -> None:
  """Write `<PMID><TAB><tree>` lines as xz (no timestamps: reproducible bytes)."""
  with lzma.open(path, 'wt', encoding='utf-8', preset=9 | lzma.PRESET_EXTREME) as f:
    f.writelines(f'{article}\t{tree}\n' for article, tree in rows)


def provenance(treebank_dir: str, licences: dict[str, str],
               trees: dict[str, list[str]]) -> str:
  """The text of PROVENANCE.md."""
  splits = treebank.split_of(list(trees))
  counts = collections.defaultdict(lambda: [0, 0, 0, 0])
  for article, lines in trees.items():
    row = counts[splits[article]]
    row[0] += 1
    for line in lines:
      words = len(treebank.normalize(treebank.parse_tree(line)).words())
      row[1] += 1
      row[2] += words
      row[3] += words <= 40
  codes = collections.Counter(licences.values())
  held_out = {name: index for index, name in treebank.HELD_OUT.items()}
  text = _HEADER.format(n_articles=len(trees), n_ccby=codes['CC-BY'], n_pd=codes['PD'],
                        n_trees=sum(map(len, trees.values())), period=treebank.SPLIT_PERIOD,
                        dev_index=held_out['dev'], test_index=held_out['test'])
  for split in treebank.SPLITS:
    text += '| {} | {:,} | {:,} | {:,} | {:,} |\n'.format(split, *counts[split])
  text += _ARTICLES
  for article, lines in trees.items():
    citation, author, url, statement = read_citation(treebank_dir, article)
    text += (f'| {article} | {splits[article]} | {len(lines):,} | {citation} | {author} | '
             f'{url} | {licences[article]} | {statement} |\n')
  return text + _REBUILD


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--treebank', default=os.path.join(_REPO, '..', 'shared', 'treebank'))
  parser.add_argument('--out', default=os.path.join(_REPO, 'transformer_jax', 'data', 'craft'))
  args = parser.parse_args()
  licences = read_licences(args.treebank)
  trees = {article: read_trees(args.treebank, article) for article in sorted(licences)}
  os.makedirs(args.out, exist_ok=True)
  write_corpus(os.path.join(args.out, 'trees.txt.xz'),
               [(article, line) for article, lines in trees.items() for line in lines])
  with open(os.path.join(args.out, 'PROVENANCE.md'), 'w', encoding='utf-8') as f:
    f.write(provenance(args.treebank, licences, trees))
  size = os.path.getsize(os.path.join(args.out, 'trees.txt.xz'))
  print(f'{sum(map(len, trees.values()))} trees of {len(trees)} articles; '
        f'trees.txt.xz {size / 1e6:.2f} MB')


if __name__ == '__main__':
  main()
