"""BLEU: sacreBLEU with signature and compound-split tokenized BLEU."""

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from transformer_jax import bleu

HYPS = ['Der schnelle braune Fuchs springt über den faulen Hund.',
        'Das ist ein Test-Satz mit Bindestrich.',
        'Wir haben 3-4 Äpfel gegessen']
REFS = ['Der schnelle braune Fuchs sprang über den faulen Hund.',
        'Dies ist ein Test-Satz mit einem Bindestrich.',
        'Wir aßen 3-4 Äpfel.']


def test_identical_corpus_scores_100():
  scores = bleu.corpus_bleu(REFS, REFS)
  assert scores.sacrebleu == pytest.approx(100.0) and scores.tokenized == pytest.approx(100.0)


def test_sacrebleu_score_matches_sacrebleu_directly():
  scores = bleu.corpus_bleu(HYPS, REFS)
  expected = sacrebleu.corpus_bleu(HYPS, [REFS])
  assert abs(scores.sacrebleu - expected.score) < 1e-9
  assert 0 < scores.sacrebleu < 100
  assert scores.signature.startswith('nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:')


def test_tokenized_bleu_is_bleu_on_split_tokens():
  split = lambda lines: [bleu.tokenize_for_bleu(x) for x in lines]
  expected = BLEU(tokenize='none', force=True).corpus_score(split(HYPS), [split(REFS)]).score
  assert abs(bleu.tokenized_bleu(HYPS, REFS) - expected) < 1e-9
  # Splitting compounds adds matching n-grams: the two conventions give different numbers.
  assert bleu.tokenized_bleu(HYPS, REFS) != bleu.corpus_bleu(HYPS, REFS).sacrebleu


def test_compound_splitting():
  assert bleu.compound_split('ein Test-Satz') == 'ein Test ##AT##-##AT## Satz'
  assert bleu.compound_split('Nord-Ost-Wind') == 'Nord ##AT##-##AT## Ost ##AT##-##AT## Wind'
  assert bleu.compound_split('x-y-z') == 'x ##AT##-##AT## y-z'  # as the Perl one-liner
  assert bleu.compound_split('a - b und -x') == 'a - b und -x'  # only inside a word
  assert bleu.tokenize_for_bleu('Ein Test-Satz, gut.') == 'Ein Test ##AT##-##AT## Satz , gut .'


def test_format_and_write(tmp_path):
  scores = bleu.corpus_bleu(HYPS, REFS)
  line = bleu.format_scores(scores)
  assert f'{scores.sacrebleu:.2f}' in line and f'{scores.tokenized:.2f}' in line
  assert scores.signature in line and '\n' not in line
  path = tmp_path / 'out' / 'hyps.txt'
  bleu.write_hypotheses(str(path), ['eins', '', 'zwei\ndrei'])
  assert path.read_text(encoding='utf-8') == 'eins\n\nzwei drei\n'


def test_length_mismatch_or_empty_corpus_is_an_error():
  with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
    bleu.corpus_bleu(['a', 'b'], ['a'])
  with pytest.raises(ValueError, match='no hypotheses'):
    bleu.corpus_bleu([], [])
