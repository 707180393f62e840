"""Rebuild the embedded English→Spanish demo corpus from the SWORD Bible modules.

Source texts (both public domain), from Debian packages read with `pysword`:
  * English: World English Bible (module `engWEB2015eb`, package `sword-text-web`);
  * Spanish: Reina-Valera 1909 (module `spaRV1909eb`, package `sword-text-sparv`).

Verses are aligned by reference (book, chapter, verse) over the 66 books both
modules have. OSIS markup is stripped (footnotes, cross references, headings and
speaker labels are dropped with their content; word/quote tags keep their text),
the all-caps chapter openings of the RV1909 ("EN el principio") are re-cased, and
pairs with an empty side are dropped. Dev and test are whole held-out books.

Writes `<out>/{train,dev,test}.{en,es,ref}.gz` (one verse a line; `.ref` holds
"Book chapter:verse") with reproducible gzip bytes, then prints the counts.

  apt-get install sword-text-web sword-text-sparv
  python scripts/build_bible_corpus.py --out transformer_jax/data/bible
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
from typing import Iterator, NamedTuple

from pysword.modules import SwordModules

ENGLISH_MODULE = 'engWEB2015eb'
SPANISH_MODULE = 'spaRV1909eb'
# Held-out whole books (OSIS names). Chosen to have no close parallel text in
# train (e.g. not one synoptic gospel, nor Chronicles against Kings).
SPLIT_BOOKS = {'dev': ('Ruth', 'Acts'), 'test': ('Esth', 'John')}

# Everything after the end of a book (the WEB appends its glossary to Rev 22:21).
_BOOK_END = re.compile(r'<div\b(?=[^>]*\beID=)(?=[^>]*\btype="book")[^>]*>.*', re.S)
# Elements dropped together with their content (not part of the verse text).
_DROPPED = re.compile(
    r'<(note|speaker)\b[^>]*>.*?</\1>|<title\b(?![^>]*canonical="true")[^>]*>.*?</title>', re.S)
# Word boundaries the markup implies without a space: two tagged elements back to
# back ("God</w><w>created", "engendró</w><transChange>un hijo") and a tagged word
# right after untagged text ("Yahweh<w>will"). An added word glued to plain text
# stays glued: it is an enclitic ("preguntándo<transChange>le").
_IMPLIED_SPACE = re.compile(
    r'</(?:w|q|transChange)>(?=<(?:w|q|transChange)\b)|(?<=\w)(?=<w\b)')
# Elements whose tags go but whose text stays.
_INLINE_TAG = re.compile(r'</?(w|q|transChange|name|seg|hi|foreign|divineName)\b[^>]*>')
# Every remaining tag (milestones, line/paragraph/list markers, canonical titles)
# separates words: it becomes a space.
_ANY_TAG = re.compile(r'<[^>]*>')
_SPACE_BEFORE_CLOSING = re.compile(r'\s+([,.;:!?’”)])')
_SPACE_AFTER_OPENING = re.compile(r'([¿¡“‘(])\s+')
_CAPS_WORD = re.compile(r"\b[^\W\d_]{2,}\b")


class Verse(NamedTuple):
  """One aligned verse: OSIS book name, chapter, verse and the two cleaned texts."""
  book: str
  chapter: int
  verse: int
  en: str
  es: str


def clean_osis(raw: str) -> str:
  """Plain text of one OSIS verse: no markup, notes or headings; single spaces."""
  text = _BOOK_END.sub('', raw)
  text = _DROPPED.sub(' ', text)
  text = _IMPLIED_SPACE.sub(' ', text)
  text = _INLINE_TAG.sub('', text)
  text = _ANY_TAG.sub(' ', text)
  text = ' '.join(text.split())
  text = _SPACE_BEFORE_CLOSING.sub(r'\1', text)
  return _SPACE_AFTER_OPENING.sub(r'\1', text)


def _is_sentence_start(text: str, start: int) -> bool:
  """Whether the word at `start` opens a sentence (only punctuation before it)."""
  before = text[:start].rstrip(' ¡¿«“"(')
  return not before or before[-1] in '.!?:'


def recase_opening(text: str, capitalised: collections.Counter, lower: collections.Counter) -> str:
  """Re-case the RV1909's all-caps chapter opening ("Y ACONTECIÓ" → "Y aconteció").

  The first run of all-caps words is fixed, skipping a heading word followed by
  a period (the acrostic letters of Psalm 119, kept as the English has them).
  A word becomes capitalised at a sentence start or when the corpus writes it
  capitalised more often than lowercase (proper nouns), else lowercase.
  """
  words = list(_CAPS_WORD.finditer(text))
  pieces, last, in_run = [], 0, False
  for match in words:
    word = match.group()
    if not word.isupper():
      if in_run:
        break
      continue
    if not in_run and text[match.end():match.end() + 1] == '.':
      continue  # an acrostic heading such as "ALEPH."
    if in_run and text[last:match.start()].strip():
      break  # the run ends at punctuation
    in_run = True
    title = word.capitalize()
    keep_title = (_is_sentence_start(text, match.start())
                  or capitalised[title] > lower[word.lower()])
    pieces.append(text[last:match.start()])
    pieces.append(title if keep_title else word.lower())
    last = match.end()
  return ''.join(pieces) + text[last:]


def _word_case_counts(texts: list[str]) -> tuple[collections.Counter, collections.Counter]:
  """Counts of capitalised and of lowercase word forms over `texts`."""
  capitalised, lower = collections.Counter(), collections.Counter()
  for text in texts:
    for word in _CAPS_WORD.findall(text):
      if word.islower():
        lower[word] += 1
      elif word[0].isupper() and word[1:].islower():
        capitalised[word] += 1
  return capitalised, lower


def read_verses(sword_dir: str) -> Iterator[tuple[str, int, int, str, str]]:
  """Raw (book, chapter, verse, English OSIS, Spanish OSIS) over the Spanish canon."""
  modules = SwordModules(sword_dir)
  modules.parse_modules()
  english = modules.get_bible_from_module(ENGLISH_MODULE)
  spanish = modules.get_bible_from_module(SPANISH_MODULE)
  for testament in ('ot', 'nt'):
    for book in spanish.get_structure().get_books()[testament]:
      for chapter, length in enumerate(book.chapter_lengths, start=1):
        for verse in range(1, length + 1):
          ref = dict(books=[book.osis_name], chapters=[chapter], verses=[verse], clean=False)
          yield book.osis_name, chapter, verse, english.get(**ref), spanish.get(**ref)


def build_verses(sword_dir: str) -> tuple[list[Verse], int]:
  """Cleaned aligned verses (pairs with an empty side dropped) and the dropped count."""
  raw = [(b, c, v, clean_osis(en), clean_osis(es)) for b, c, v, en, es in read_verses(sword_dir)]
  capitalised, lower = _word_case_counts([es for *_, es in raw])
  verses = [Verse(b, c, v, en, recase_opening(es, capitalised, lower) if v == 1 else es)
            for b, c, v, en, es in raw if en and es]
  return verses, len(raw) - len(verses)


def split_of(book: str) -> str:
  """The split ('train', 'dev' or 'test') a book belongs to."""
  return next((split for split, books in SPLIT_BOOKS.items() if book in books), 'train')


def write_gzip_lines(path: str, lines: list[str]) -> None:
  """Write UTF-8 lines to `path` as gzip with fixed header (reproducible bytes)."""
  with open(path, 'wb') as raw, gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0) as f:
    f.write(''.join(line + '\n' for line in lines).encode('utf-8'))


def write_splits(verses: list[Verse], out_dir: str) -> dict[str, int]:
  """Write the three splits to `out_dir`; returns the verse count per split."""
  os.makedirs(out_dir, exist_ok=True)
  by_split = collections.defaultdict(list)
  for verse in verses:
    by_split[split_of(verse.book)].append(verse)
  for split, rows in by_split.items():
    write_gzip_lines(os.path.join(out_dir, f'{split}.en.gz'), [r.en for r in rows])
    write_gzip_lines(os.path.join(out_dir, f'{split}.es.gz'), [r.es for r in rows])
    write_gzip_lines(os.path.join(out_dir, f'{split}.ref.gz'),
                     [f'{r.book} {r.chapter}:{r.verse}' for r in rows])
  return {split: len(rows) for split, rows in sorted(by_split.items())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sword_dir', default='/usr/share/sword')
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'transformer_jax', 'data',
      'bible'))
  args = parser.parse_args()
  verses, dropped = build_verses(args.sword_dir)
  counts = write_splits(verses, args.out)
  print(f'{len(verses)} aligned verses ({dropped} dropped: a side empty); per split: {counts}')


if __name__ == '__main__':
  main()
