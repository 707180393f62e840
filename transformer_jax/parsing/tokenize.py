"""Raw English sentences -> words as the CRAFT treebank writes them (Penn conventions).

NLTK's Penn Treebank tokenizer (`nltk.tokenize.TreebankWordTokenizer`: `do n't`,
`cells .`, quotes as `` and '') and then CRAFT's own conventions, which differ from the
WSJ's: a hyphen between word characters is a word of its own (`fatty - acid`, `7 - kb`),
except after the prefixes CRAFT keeps attached (`PREFIXES`: the prefixes of the train
split's hyphenated words seen at least twice, e.g. `anti-inflammatory`) and before
`fold` (`2-fold`); `(` and `)` become -LRB- / -RRB-, brackets `[` `]` stay as they are.
Measured on the treebank's own sentences, detokenised and tokenised again
(BENCHMARKS.md, "Tokenising raw text").
"""

from __future__ import annotations

import functools

import regex


# Prefixes that CRAFT keeps on their word (anti-inflammatory, co-amplified, X-ray).
PREFIXES = frozenset({
    'anti', 'auto', 'co', 'counter', 'cross', 'de', 'hetero', 'homo', 'inter', 'intra',
    'mal', 'micro', 'mid', 'mis', 'multi', 'non', 'over', 'post', 'pre', 'pro', 'pseudo',
    're', 'semi', 'sub', 'x'})
SUFFIXES = frozenset({'fold'})
ESCAPES = {'(': '-LRB-', ')': '-RRB-'}
_INNER_HYPHEN = regex.compile(r'(?<=\w)-(?=\w)')


@functools.lru_cache(maxsize=1)
def _tokenizer():
  from nltk.tokenize import TreebankWordTokenizer  # data-free: no download needed
  return TreebankWordTokenizer()


def _split_hyphens(token: str) -> list[str]:
  """`token` cut at each inner hyphen that CRAFT splits, the hyphens kept as words."""
  pieces, start = [], 0
  for match in _INNER_HYPHEN.finditer(token):
    left, right = token[start:match.start()], token[match.end():].split('-')[0]
    if left.lower() in PREFIXES or right.lower() in SUFFIXES:
      continue
    pieces += [left, '-']
    start = match.end()
  return pieces + [token[start:]]


def words(sentence: str) -> list[str]:
  """The treebank words of one raw sentence (empty for a blank one)."""
  tokens = _tokenizer().tokenize(sentence)
  return [ESCAPES.get(piece, piece) for token in tokens for piece in _split_hyphens(token)
          if piece]
