"""BLEU as reported today (sacreBLEU) and as the paper-era WMT EN-DE numbers were computed.

* sacreBLEU: detokenized corpus BLEU with its signature string (Post 2018), with the
  tokenizer sacreBLEU picks for the target language (`sacrebleu -l xx-zh` etc.): `zh` for
  Chinese, `ja-mecab` for Japanese, `ko-mecab` for Korean, `13a` for every other language
  (and for ''). A whole unsegmented CJK sentence would be one 13a word.
* Tokenized BLEU with compound splitting, the tensor2tensor / fairseq
  `compound_split_bleu` convention behind the paper's 27.3 / 28.4: tokenize hypotheses
  and references, split hyphenated compounds `a-b` -> `a ##AT##-##AT## b`, then BLEU on
  the tokens. Tokenization is the same language-aware one (13a, close to Moses'
  tokenizer.perl that those scripts used, for EN-DE); the BLEU itself is sacreBLEU's with
  tokenize='none'.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Sequence

from sacrebleu.metrics import BLEU

# The scripts' `perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'`, quirk included:
# matches do not overlap, so the second hyphen of `x-y-z` (one-letter middle) stays.
_COMPOUND = re.compile(r'(\S)-(\S)')


@dataclasses.dataclass(frozen=True)
class BleuScores:
  """Corpus BLEU two ways (0-100): sacreBLEU with its signature, and tokenized BLEU
  (with `tokenizer`, the signature's `tok:`, before compound splitting)."""
  sacrebleu: float
  signature: str
  tokenized: float
  tokenizer: str


def compound_split(text: str) -> str:
  """Split hyphenated compounds of tokenized text: 'a-b' -> 'a ##AT##-##AT## b'."""
  return _COMPOUND.sub(r'\1 ##AT##-##AT## \2', text)


def sacrebleu_metric(target_lang: str) -> BLEU:
  """sacreBLEU's BLEU with its defaults for `target_lang` (an ISO 639-1 code such as 'de'
  or 'zh'; a region, 'zh-TW', is ignored; '' = unknown: 13a). ValueError in one line if
  the language's tokenizer cannot be set up (e.g. MeCab missing for ja / ko)."""
  lang = re.split('[-_]', target_lang)[0].lower()
  try:
    return BLEU(trg_lang=lang)
  except (RuntimeError, ImportError, AssertionError) as e:
    raise ValueError(f'BLEU for target language {target_lang!r}: sacreBLEU cannot set up '
                     f'its tokenizer: {" ".join(str(e).split())}') from None


def tokenize_for_bleu(text: str, tokenizer: Callable[[str], str]) -> str:
  """`tokenizer` (a sacreBLEU tokenizer, e.g. `sacrebleu_metric('de').tokenizer`: 13a)
  followed by compound splitting."""
  return compound_split(tokenizer(text.strip()))


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str],
                   tokenizer: Callable[[str], str]) -> float:
  """Compound-split tokenized corpus BLEU (t2t / fairseq `compound_split_bleu`)."""
  metric = BLEU(tokenize='none', force=True)
  hyps = [tokenize_for_bleu(h, tokenizer) for h in hypotheses]
  refs = [tokenize_for_bleu(r, tokenizer) for r in references]
  return metric.corpus_score(hyps, [refs]).score


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *,
                target_lang: str) -> BleuScores:
  """Both BLEU scores of detokenized `hypotheses` (in `target_lang`, see
  `sacrebleu_metric`) against one reference each."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
  if not hypotheses:
    raise ValueError('no hypotheses to score')
  metric = sacrebleu_metric(target_lang)
  score = metric.corpus_score(list(hypotheses), [list(references)]).score
  return BleuScores(sacrebleu=score, signature=str(metric.get_signature()),
                    tokenized=tokenized_bleu(hypotheses, references, metric.tokenizer),
                    tokenizer=metric.tokenizer.signature())


def format_scores(scores: BleuScores) -> str:
  """One line with both scores side by side."""
  return (f'sacreBLEU {scores.sacrebleu:.2f} ({scores.signature})  |  '
          f'tokenized BLEU {scores.tokenized:.2f} ({scores.tokenizer} + compound split)')


def write_hypotheses(path: str, hypotheses: Sequence[str]) -> None:
  """Write one hypothesis per line (UTF-8); line breaks inside a hypothesis become spaces."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    for hypothesis in hypotheses:
      f.write(' '.join(hypothesis.splitlines()) + '\n')
