"""BLEU as reported today (sacreBLEU) and as the paper-era WMT EN-DE numbers were computed.

* sacreBLEU: detokenized corpus BLEU with its signature string (Post 2018).
* Tokenized BLEU with compound splitting, the tensor2tensor / fairseq
  `compound_split_bleu` convention behind the paper's 27.3 / 28.4: tokenize hypotheses
  and references, split hyphenated compounds `a-b` -> `a ##AT##-##AT## b`, then BLEU on
  the tokens. Tokenization here is sacreBLEU's 13a (close to Moses' tokenizer.perl, which
  those scripts used); the BLEU itself is sacreBLEU's with tokenize='none'.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# The scripts' `perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'`, quirk included:
# matches do not overlap, so the second hyphen of `x-y-z` (one-letter middle) stays.
_COMPOUND = re.compile(r'(\S)-(\S)')
_tokenize_13a = Tokenizer13a()


@dataclasses.dataclass(frozen=True)
class BleuScores:
  """Corpus BLEU two ways (0-100): sacreBLEU with its signature, and tokenized BLEU."""
  sacrebleu: float
  signature: str
  tokenized: float


def compound_split(text: str) -> str:
  """Split hyphenated compounds of tokenized text: 'a-b' -> 'a ##AT##-##AT## b'."""
  return _COMPOUND.sub(r'\1 ##AT##-##AT## \2', text)


def tokenize_for_bleu(text: str) -> str:
  """13a tokenization followed by compound splitting."""
  return compound_split(_tokenize_13a(text.strip()))


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """sacreBLEU corpus BLEU of detokenized text (one reference each) -> (score, signature)."""
  metric = BLEU()
  score = metric.corpus_score(list(hypotheses), [list(references)])
  return score.score, str(metric.get_signature())


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Compound-split tokenized corpus BLEU (t2t / fairseq `compound_split_bleu`)."""
  metric = BLEU(tokenize='none', force=True)
  hyps = [tokenize_for_bleu(h) for h in hypotheses]
  refs = [tokenize_for_bleu(r) for r in references]
  return metric.corpus_score(hyps, [refs]).score


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> BleuScores:
  """Both BLEU scores of detokenized `hypotheses` against one reference each."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
  if not hypotheses:
    raise ValueError('no hypotheses to score')
  score, signature = sacrebleu_score(hypotheses, references)
  return BleuScores(sacrebleu=score, signature=signature,
                    tokenized=tokenized_bleu(hypotheses, references))


def format_scores(scores: BleuScores) -> str:
  """One line with both scores side by side."""
  return (f'sacreBLEU {scores.sacrebleu:.2f} ({scores.signature})  |  '
          f'tokenized BLEU {scores.tokenized:.2f} (13a + compound split)')


def write_hypotheses(path: str, hypotheses: Sequence[str]) -> None:
  """Write one hypothesis per line (UTF-8); line breaks inside a hypothesis become spaces."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    for hypothesis in hypotheses:
      f.write(' '.join(hypothesis.splitlines()) + '\n')
