"""Constituency parsing data and scoring: treebank, split, linearisation, repair, EVALB."""

import random

import pytest

from transformer_jax import parsing
from transformer_jax.parsing import evalb, linearize, treebank
from transformer_jax.parsing.treebank import Tree, normalize, parse_tree


@pytest.fixture(scope='module')
def dev_trees():
  return treebank.split_trees('dev')


def test_split_is_disjoint_by_article_and_deterministic():
  splits = {name: treebank.split_articles(name) for name in treebank.SPLITS}
  assert [len(splits[name]) for name in treebank.SPLITS] == [55, 5, 5]
  assert set(splits['train']).isdisjoint(splits['dev'] + splits['test'])
  assert set(splits['dev']).isdisjoint(splits['test'])
  assert splits['dev'] == ['15328533', '15921521', '16433929', '17002498', '17465682']
  assert splits['test'] == ['15619330', '16110338', '16611361', '17083276', '17696610']
  # The rule depends only on the article set, not on the order articles are given in.
  articles = [article for article, _ in treebank.read_corpus()]
  assert treebank.split_of(articles) == treebank.split_of(list(reversed(articles)))


def test_corpus_counts(dev_trees):
  assert len(treebank.read_corpus()) == 22261
  assert len(dev_trees) == 1603
  assert sum(len(tree.words()) for tree in dev_trees) == 40576


def test_normalize_strips_tags_traces_wrappers():
  raw = parse_tree('( (CAPTION (S (NP-SBJ-1 (NNS Cells)) (VP (VBD were) (VP (VBN grown) '
                   '(NP-1 (-NONE- *)) (PP-LOC=2 (IN in) (NP (-LRB- -LRB-) (NN Xpd TTD) '
                   '(-RRB- -RRB-))))) (. .))) )')
  assert str(normalize(raw)) == (
      '(TOP (S (NP (NNS Cells)) (VP (VBD were) (VP (VBN grown) (PP (IN in) (NP (-LRB- -LRB-) '
      '(NN Xpd) (NN TTD) (-RRB- -RRB-))))) (. .)))')
  cit = normalize(parse_tree('( (S (NP (NN Growth) (CIT (-LRB- -LRB-) (CD 12) (-RRB- -RRB-)))))'))
  assert str(cit) == '(TOP (S (NP (NN Growth) (CIT (-LRB- -LRB-) (CD 12) (-RRB- -RRB-)))))'


def test_parse_tree_rejects_bad_bracketing():
  for text in ('(S (NN a)', '(S (NN a)))', '(S (NN a)) (S (NN b))', 'word'):
    with pytest.raises(ValueError):
      parse_tree(text)


def test_round_trip_on_real_trees(dev_trees):
  for tree in dev_trees:
    sequence = linearize.to_sequence(tree)
    back, repaired = linearize.from_sequence(sequence, tree.words(), tree.tags())
    assert not repaired
    assert str(back) == str(tree)
  pairs = parsing.pairs('dev')
  assert pairs[0] == (' '.join(dev_trees[0].words()), linearize.to_sequence(dev_trees[0]))
  assert all(target.split().count('XX') == len(source.split()) for source, target in pairs)


def test_sequence_format():
  tree = normalize(parse_tree('( (S (NP (NNS Cells)) (VP (VBP divide)) (. .)) )'))
  assert linearize.to_sequence(tree) == '(S (NP XX )NP (VP XX )VP XX )S'
  assert linearize.right_branching_sequence(3) == '(S XX (NP XX XX )NP )S'


@pytest.mark.parametrize('sequence, expected', [
    # unbalanced: too many opens, then a close that matches nothing
    ('(S (NP XX XX', '(TOP (S (NP (XX a) (XX b))) (XX c) (XX d))'),
    (')S (S XX XX XX XX )S )S', '(TOP (S (XX a) (XX b) (XX c) (XX d)))'),
    # too many word slots, a mislabelled close, an empty constituent, junk
    ('(S XX (VP junk XX (PP )PP )NP XX XX XX XX )S', '(TOP (S (XX a) (VP (XX b)) (XX c) (XX d)))'),
    # too few word slots; nothing at all
    ('(S (NP XX )NP )S', '(TOP (S (NP (XX a))) (XX b) (XX c) (XX d))'),
    ('', '(TOP (XX a) (XX b) (XX c) (XX d))'),
])
def test_repair_is_deterministic_and_well_formed(sequence, expected):
  tree, repaired = linearize.from_sequence(sequence, 'a b c d'.split())
  assert repaired
  assert str(tree) == expected


def test_repair_of_random_garbage_keeps_the_words():
  rng = random.Random(0)
  vocabulary = ['(S', '(NP', ')NP', ')S', ')', 'XX', 'XX', 'XX', '(', 'junk']
  words = 'the cell divides -LRB- fast -RRB- .'.split()
  for _ in range(300):
    sequence = ' '.join(rng.choice(vocabulary) for _ in range(rng.randint(0, 30)))
    tree, _ = linearize.from_sequence(sequence, words)
    assert tree.label == 'TOP' and tree.words() == words
    assert str(parse_tree(str(tree))) == str(tree)  # balanced, readable back
    assert all(node.children for _, node in tree.events())  # no empty constituents


def test_deep_prediction_does_not_recurse():
  words = ['w'] * 3000
  tree, repaired = linearize.from_sequence(linearize.right_branching_sequence(3000), words)
  assert not repaired and tree.words() == words
  assert linearize.to_sequence(tree) == linearize.right_branching_sequence(3000)
  assert evalb.evaluate([tree], [tree])['all'].f1 == 100.0


# Hand-made cases and EVALB's numbers for them: the C EVALB (allennlp==2.10.1 wheel,
# allennlp/tools/EVALB/evalb.c, built with gcc) was run with COLLINS.prm on the gold trees
# below against the predictions made trees over the gold words with the gold POS tags
# (`linearize.from_sequence(sequence, words, tags)`); the numbers are copied from its output.
HAND_MADE = [
    # punctuation inside a constituent in one tree and outside in the other; a predicted
    # constituent over a comma only (it spans no word once punctuation is deleted)
    ('(TOP (S (NP-SBJ (DT The) (NN cell)) (VP (VBZ divides) (, ,) (ADVP (RB fast))) (. .)))',
     '(S (NP XX XX XX )NP (VP XX )VP (ADVP XX XX )ADVP )S', (4, 3, 2)),
    # PRT in gold, ADVP predicted (EQ_LABEL)
    ('(TOP (S (NP (PRP They)) (VP (VBD gave) (PRT (RP up))) (. .)))',
     '(S (NP XX )NP (VP XX (ADVP XX )ADVP )VP XX )S', (4, 4, 4)),
    # function tags, a trace and a co-index in gold; a duplicated unary NP predicted
    ('(TOP (S (NP-SBJ-1 (NP (NNS Cells))) (VP (VBD were) (VP (VBN grown) (NP-1 (-NONE- *)) '
     '(PP-LOC (IN in) (NP=2 (NN medium))))) (. .)))',
     '(S (NP XX )NP (VP XX (VP XX (PP XX (NP (NP XX )NP )NP )PP )VP )VP XX )S', (7, 7, 6)),
    # quotes and a colon, attached differently
    ("(TOP (S (`` ``) (NP (NN Growth)) ('' '') (VP (VBZ stops) (: :) (NP (NN arrest))) (. .)))",
     '(S (PRN XX )PRN (NP XX XX )NP (VP XX XX (NP XX )NP )VP XX )S', (4, 4, 4)),
    # only punctuation: EVALB skips the sentence
    ('(TOP (FRAG (: :) (. .)))', '(FRAG XX XX )FRAG', None),
    # 41 words of which one is a trace: length 40, in the <= 40 figures
    ('(TOP (S (NP (NN w0)) (VP (VBZ w1) (NP (-NONE- *)) (NP '
     + ' '.join(f'(NN w{i})' for i in range(2, 39)) + ')) (. .)))',
     linearize.right_branching_sequence(40), (4, 39, 2)),
    # 42 words: not in the <= 40 figures
    ('(TOP (S (NP (NN v0) (NN v1)) (VP (VBZ v2) (NP '
     + ' '.join(f'(NN v{i})' for i in range(3, 41)) + ')) (. .)))',
     '(S ' + 'XX ' * 42 + ')S', (4, 1, 1)),
]
# EVALB: (recall, precision, F-measure, sentences, skipped) for all and for len <= 40.
EVALB_SUMMARY = {'all': (70.37, 32.76, 44.71, 7, 1), 'len<=40': (78.26, 31.58, 45.00, 6, 1)}


def test_scorer_matches_evalb_on_hand_made_cases():
  golds = [parse_tree(gold) for gold, _, _ in HAND_MADE]
  # Predictions with XX preterminals, as the parser makes them: the scorer uses gold tags.
  tests = [linearize.from_sequence(sequence, normalize(gold).words())[0]
           for gold, (_, sequence, _) in zip(golds, HAND_MADE)]
  for gold, test, (_, _, counts) in zip(golds, tests, HAND_MADE):
    assert evalb.sentence_counts(gold, test) == counts
  for key, scores in evalb.evaluate(golds, tests).items():
    recall, precision, f1, sentences, skipped = EVALB_SUMMARY[key]
    assert (round(scores.recall, 2), round(scores.precision, 2), round(scores.f1, 2)) == (
        recall, precision, f1)
    assert (scores.sentences, scores.skipped) == (sentences, skipped)


def test_scorer_rejects_other_words():
  gold = parse_tree('(TOP (S (NN a) (NN b)))')
  with pytest.raises(ValueError, match='differ'):
    evalb.sentence_counts(gold, Tree('TOP', [Tree('XX', ['a'])]))


def test_score_predictions_and_baseline(dev_trees):
  sources = [' '.join(tree.words()) for tree in dev_trees]
  targets = [linearize.to_sequence(tree) for tree in dev_trees]
  scores, repaired = parsing.score_predictions(targets, sources, dev_trees)
  assert scores['all'].f1 == 100.0 and repaired == 0
  baseline = [linearize.right_branching_sequence(len(source.split())) for source in sources]
  scores, repaired = parsing.score_predictions(baseline, sources, dev_trees)
  # Checked against the C EVALB (docs/parsing_evalb_check.md): 3019/29492/38972.
  assert (scores['all'].matched, scores['all'].gold, scores['all'].test) == (3019, 29492, 38972)
  assert repaired == 0


def test_tokenizer_follows_the_treebank_conventions():
  from transformer_jax.parsing import tokenize
  assert tokenize.words('"The cells weren\'t grown (in vitro)," they said.') == (
      "`` The cells were n't grown -LRB- in vitro -RRB- , '' they said .").split()
  # CRAFT splits inner hyphens but keeps prefixes and -fold; brackets [ ] stay.
  assert tokenize.words('Fatty-acid co-amplified a 2-fold anti-PPARδ-treated set [12].') == (
      'Fatty - acid co-amplified a 2-fold anti-PPARδ - treated set [ 12 ] .').split()
  assert tokenize.words('  \t ') == []


def test_tokenizer_recovers_the_words_of_detokenised_dev_sentences(dev_trees):
  """The treebank's sentences, detokenised (NLTK) and tokenised again: nearly all (the
  rest: URLs) give back their words."""
  from nltk.tokenize.treebank import TreebankWordDetokenizer
  from transformer_jax.parsing import tokenize
  detokenizer = TreebankWordDetokenizer()
  unescape = {escaped: char for char, escaped in tokenize.ESCAPES.items()}
  same = sum(tokenize.words(detokenizer.detokenize([unescape.get(w, w) for w in tree.words()]))
             == tree.words() for tree in dev_trees)
  assert same >= 0.98 * len(dev_trees)


def test_tag_accuracy_counts_words_tagged_as_gold():
  from transformer_jax.parsing import parser
  gold = [parse_tree('(TOP (S (NP (NNS Cells)) (VP (VBP divide)) (. .)))')]
  test, _ = linearize.from_sequence('(S (NP NNS )NP (VP NN )VP . )S', gold[0].words(),
                                    slots={'NNS', 'NN', '.'})
  assert test.tags() == ['NNS', 'NN', '.']
  assert parser.tag_accuracy(gold, [test]) == pytest.approx(200 / 3)
