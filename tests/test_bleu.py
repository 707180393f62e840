"""BLEU: sacreBLEU with signature (language-aware) and compound-split tokenized BLEU."""

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from transformer_jax import bleu

HYPS = ['Der schnelle braune Fuchs springt über den faulen Hund.',
        'Das ist ein Test-Satz mit Bindestrich.',
        'Wir haben 3-4 Äpfel gegessen']
REFS = ['Der schnelle braune Fuchs sprang über den faulen Hund.',
        'Dies ist ein Test-Satz mit einem Bindestrich.',
        'Wir aßen 3-4 Äpfel.']
TOK_13A = Tokenizer13a()


def test_identical_corpus_scores_100():
  scores = bleu.corpus_bleu(REFS, REFS, target_lang='de')
  assert scores.sacrebleu == pytest.approx(100.0) and scores.tokenized == pytest.approx(100.0)


def test_sacrebleu_score_matches_sacrebleu_directly():
  scores = bleu.corpus_bleu(HYPS, REFS, target_lang='de')
  expected = sacrebleu.corpus_bleu(HYPS, [REFS])
  assert abs(scores.sacrebleu - expected.score) < 1e-9
  assert 0 < scores.sacrebleu < 100
  assert scores.signature.startswith('nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:')


def test_tokenized_bleu_is_bleu_on_split_tokens():
  split = lambda lines: [bleu.tokenize_for_bleu(x, TOK_13A) for x in lines]
  expected = BLEU(tokenize='none', force=True).corpus_score(split(HYPS), [split(REFS)]).score
  scores = bleu.corpus_bleu(HYPS, REFS, target_lang='de')
  assert abs(bleu.tokenized_bleu(HYPS, REFS, TOK_13A) - expected) < 1e-9
  assert scores.tokenized == pytest.approx(expected) and scores.tokenizer == '13a'
  # Splitting compounds adds matching n-grams: the two conventions give different numbers.
  assert scores.tokenized != scores.sacrebleu


# A near-perfect hypothesis of each language (one character / particle differs).
CJK = {
    'zh': (['我们今天去公园散步，天气很好。', '他喜欢读书和写字。'],
           ['我们今天去公园散步，天气非常好。', '他喜欢读书和写字。']),
    'ja': (['私たちは今日公園を散歩しました。天気はとても良かったです。', '彼は本を読むのが好きです。'],
           ['私たちは今日公園を散歩した。天気はとても良かったです。', '彼は本を読むのが好きです。']),
    'ko': (['우리는 오늘 공원에서 산책했습니다.', '그는 책 읽기를 좋아합니다.'],
           ['우리는 오늘 공원에서 산책을 했습니다.', '그는 책 읽기를 좋아합니다.']),
}


@pytest.mark.parametrize('lang, tok', [('zh', 'zh'), ('ja', 'ja-mecab'), ('ko', 'ko-mecab'),
                                       ('zh-TW', 'zh')])
def test_cjk_targets_use_sacrebleus_language_defaults(lang, tok):
  hyps, refs = CJK[lang[:2]]
  scores = bleu.corpus_bleu(hyps, refs, target_lang=lang)
  expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok)
  assert scores.sacrebleu == pytest.approx(expected.score) and scores.sacrebleu > 50
  assert f'|tok:{tok}' in scores.signature and scores.tokenizer.startswith(tok)
  assert scores.tokenized == pytest.approx(expected.score)  # no hyphens to split here
  if lang != 'ko':  # 13a: an unsegmented zh / ja sentence is one word (Korean has spaces)
    assert bleu.corpus_bleu(hyps, refs, target_lang='').sacrebleu < 30


def test_a_tokenizer_that_cannot_load_is_a_one_line_error(monkeypatch):
  def fail(**_):
    raise RuntimeError('\nJapanese tokenization requires extra dependencies.\n\n    pip x\n')
  monkeypatch.setattr(bleu, 'BLEU', fail)
  with pytest.raises(ValueError, match=r"^BLEU for target language 'ja': sacreBLEU cannot set "
                                       r'up its tokenizer: Japanese tokenization requires '
                                       r'extra dependencies. pip x$'):
    bleu.sacrebleu_metric('ja')


def test_compound_splitting():
  assert bleu.compound_split('ein Test-Satz') == 'ein Test ##AT##-##AT## Satz'
  assert bleu.compound_split('Nord-Ost-Wind') == 'Nord ##AT##-##AT## Ost ##AT##-##AT## Wind'
  assert bleu.compound_split('x-y-z') == 'x ##AT##-##AT## y-z'  # as the Perl one-liner
  assert bleu.compound_split('a - b und -x') == 'a - b und -x'  # only inside a word
  assert (bleu.tokenize_for_bleu('Ein Test-Satz, gut.', TOK_13A)
          == 'Ein Test ##AT##-##AT## Satz , gut .')


def test_format_and_write(tmp_path):
  scores = bleu.corpus_bleu(HYPS, REFS, target_lang='de')
  line = bleu.format_scores(scores)
  assert f'{scores.sacrebleu:.2f}' in line and f'{scores.tokenized:.2f}' in line
  assert scores.signature in line and '\n' not in line
  path = tmp_path / 'out' / 'hyps.txt'
  bleu.write_hypotheses(str(path), ['eins', '', 'zwei\ndrei'])
  assert path.read_text(encoding='utf-8') == 'eins\n\nzwei drei\n'


def test_length_mismatch_or_empty_corpus_is_an_error():
  with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
    bleu.corpus_bleu(['a', 'b'], ['a'], target_lang='de')
  with pytest.raises(ValueError, match='no hypotheses'):
    bleu.corpus_bleu([], [], target_lang='de')
