"""The parser's target symbols and tree automaton: gold trees accepted token by token, and
every constrained output of a random model a tree over exactly its input's words."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import linen as nn

from transformer_jax import Transformer, TransformerConfig, decoding
from transformer_jax import tokenizer as tokenizer_lib
from transformer_jax.parsing import constraints, linearize, symbols, treebank

SENTENCES = 96  # dev trees the automaton is checked on


@pytest.fixture(scope='module')
def dev_trees():
  return treebank.split_trees('dev')


@pytest.fixture(scope='module')
def vocab(dev_trees):
  """A 600-piece unigram vocabulary of dev sentences holding every linearisation's symbols."""
  def sentences():
    for tree in dev_trees[:800]:
      yield ' '.join(tree.words())
      yield linearize.to_sequence(tree, 'words')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences(), model_writer=model, vocab_size=600, model_type='unigram',
      character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
      user_defined_symbols=sorted(set(symbols.vocabulary_symbols('xx'))
                                  | set(symbols.vocabulary_symbols('tags'))))
  return tokenizer_lib.Tokenizer(model.getvalue())


def _padded(rows):
  array = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    array[i, :len(row)] = row
  return array


def test_vocabulary_symbols_by_linearization():
  xx, tags, words = (symbols.vocabulary_symbols(name) for name in linearize.LINEARIZATIONS)
  assert xx[:3] == ('▁XX', '▁(ADJP', '▁)ADJP') and len(xx) == 55
  assert words == xx[1:] and tags[len(symbols.tags()):] == words
  assert {'▁NN', '▁-LRB-', '▁.'} <= set(tags)
  with pytest.raises(ValueError, match="unknown linearization 'trees'"):
    symbols.vocabulary_symbols('trees')


def test_token_table_refuses_another_vocabulary():
  with pytest.raises(ValueError, match="not a vocabulary of the 'xx' linearisation"):
    symbols.token_table(['<pad>', '</s>', '<unk>', '▁the', '▁(NP', '▁)NP'], 'xx')
  with pytest.raises(ValueError, match='bracket symbols'):
    symbols.token_table(['<pad>', '</s>', '<unk>', '▁the'], 'words')


@pytest.mark.parametrize('linearization', linearize.LINEARIZATIONS)
def test_targets_read_back_and_sources_count_words(vocab, dev_trees, linearization):
  """Reading a target's ids gives its bracket sequence (one XX a word for 'words'); the
  automaton counts a source's words right; 'words' targets spell words with the source's
  pieces (but for rare ties of the unigram segmentation)."""
  table = symbols.vocabulary_table(vocab, linearization)
  differ = 0
  for tree in dev_trees:
    source = vocab.encode(' '.join(tree.words()))
    target = vocab.encode(linearize.to_sequence(tree, linearization))
    assert symbols.source_words(source, table) == len(tree.words())
    expected = linearize.to_sequence(tree, 'tags' if linearization == 'tags' else 'xx')
    assert symbols.read_ids(target, table) == expected
    back, repaired = linearize.from_sequence(expected, tree.words(), slots=table.slots)
    assert not repaired and back.tags() == (tree.tags() if linearization == 'tags'
                                            else ['XX'] * len(tree.words()))
    if table.copies_words:
      spelled = [t for t in target if table.kinds[t] in (symbols.SLOT, symbols.PIECE)]
      differ += spelled != source[:-1]
  assert differ <= len(dev_trees) // 100


def _within_bounds(tree):
  """Whether a tree opens at most MAX_RUN brackets in a row, MAX_SAME of one label."""
  run, same, previous = 0, 0, None
  for event, node in tree.events():
    if event == treebank.OPEN and node is not tree:
      same = same + 1 if run and node.label == previous else 1
      run, previous = run + 1, node.label
      if run > constraints.MAX_RUN or same > constraints.MAX_SAME:
        return False
    elif event != treebank.OPEN:
      run = 0
  return True


def test_the_bounds_keep_nearly_every_tree(dev_trees):
  assert sum(map(_within_bounds, dev_trees)) >= 0.99 * len(dev_trees)


@pytest.mark.parametrize('linearization', linearize.LINEARIZATIONS)
def test_gold_sequences_are_accepted_token_by_token(vocab, dev_trees, linearization):
  table = symbols.vocabulary_table(vocab, linearization)
  automaton = constraints.TreeConstraint.of(table)
  trees = [tree for tree in dev_trees[:SENTENCES + 20] if _within_bounds(tree)]
  trees = [tree for tree in trees if not table.copies_words
           or [t for t in vocab.encode(linearize.to_sequence(tree, 'words'))[:-1]
               if table.kinds[t] != symbols.OPEN and table.kinds[t] != symbols.CLOSE]
           == vocab.encode(' '.join(tree.words()))[:-1]][:SENTENCES]
  sources = _padded([vocab.encode(' '.join(tree.words())) for tree in trees])
  targets = _padded([vocab.encode(linearize.to_sequence(tree, linearization)) for tree in trees])
  # The tightest limit the targets fit: the automaton must still accept them.
  limits = jnp.asarray(np.sum(targets > 0, axis=1))
  state = automaton.init(decoding.Start(jnp.asarray(sources), limits, 1, targets.shape[1]))
  allowed, update = jax.jit(automaton.allowed), jax.jit(automaton.update)
  for column in targets.T:
    mask = np.asarray(allowed(state))
    live = column > 0
    assert np.all(mask[np.arange(len(trees)), column][live])
    # At the end of each target (EOS) nothing else is allowed.
    assert np.all(mask[column == 1].sum(axis=1) == 1)
    state = update(state, jnp.asarray(column))


@pytest.fixture(scope='module')
def random_model(vocab):
  config = TransformerConfig(vocab_size=vocab.vocab_size, d_model=32, d_ff=64, num_heads=2,
                             num_encoder_layers=1, num_decoder_layers=1, max_len=256,
                             dropout_rate=0.0)
  ones = jnp.ones((1, 8), jnp.int32)
  params = nn.meta.unbox(Transformer(config).init(jax.random.key(1), ones, ones)['params'])
  return decoding.Model(params, config)


@pytest.mark.parametrize('linearization', linearize.LINEARIZATIONS)
@pytest.mark.parametrize('max_extra_len', [0, 40])
def test_constrained_outputs_of_a_random_model_are_trees(vocab, dev_trees, random_model,
                                                         linearization, max_extra_len):
  """Greedy, beam and every n-best output: a tree over exactly the input's words, without
  repair, within the length limit (max_extra_len 0: no room for any bracket in 'words')."""
  table = symbols.vocabulary_table(vocab, linearization)
  step = constraints.constrained(random_model, table)
  trees = [tree for tree in dev_trees[:40] if len(tree.words()) <= 12][:8]
  sources = _padded([vocab.encode(' '.join(tree.words())) for tree in trees])
  source = jnp.asarray(np.pad(sources, ((0, 0), (0, 64 - sources.shape[1]))))
  results = [decoding.greedy(step, source, max_extra_len=max_extra_len),
             decoding.beam_search(step, source, beam_size=4, n_best=3, alpha=0.3,
                                  max_extra_len=max_extra_len)]
  brackets = 0
  for result in results:
    tokens, finite = np.asarray(result.tokens), np.isfinite(np.asarray(result.log_probs))
    assert np.all(finite[:, 0])
    if max_extra_len == 0 and linearization == 'words':  # one possible tree: a flat one
      assert not np.any(finite[:, 1:])
    for tree, outputs, length, found in zip(trees, tokens, np.sum(sources > 0, axis=1),
                                            finite):
      for ids in outputs[found]:
        assert np.sum(ids > 0) <= length + max_extra_len
        sequence = symbols.read_ids(ids, table)
        parsed, repaired = linearize.from_sequence(sequence, tree.words(), slots=table.slots)
        assert not repaired, sequence
        assert parsed.words() == tree.words()
        brackets += sequence.count('(')
  assert (brackets == 0) == (max_extra_len == 0 and linearization == 'words')


def test_unconstrained_random_outputs_need_repair(vocab, dev_trees, random_model):
  """The automaton is what makes the outputs trees: without it a random model's are not."""
  table = symbols.vocabulary_table(vocab, 'xx')
  trees = dev_trees[:8]
  source = jnp.asarray(_padded([vocab.encode(' '.join(tree.words())) for tree in trees]))
  tokens = decoding.greedy(random_model, source, max_extra_len=40).best
  repaired = [linearize.from_sequence(symbols.read_ids(ids, table), tree.words())[1]
              for tree, ids in zip(trees, np.asarray(tokens))]
  assert any(repaired)


def test_words_as_one_scores_placing_the_next_word_as_one_action(vocab, random_model):
  """'words': each word piece carries log sum_w p(w), brackets and EOS keep their own
  log-probs, so under the automaton (one piece allowed) the allowed mass is at most 1."""
  table = symbols.vocabulary_table(vocab, 'words')
  step = constraints.constrained(random_model, table)
  inner = step.inner
  assert isinstance(inner, constraints.WordsAsOne) and inner.inner is random_model
  assert not isinstance(constraints.constrained(random_model, table, words_as_one=False).inner,
                        constraints.WordsAsOne)
  assert constraints.constrained(random_model, symbols.vocabulary_table(vocab, 'xx')
                                 ).inner is random_model
  source = jnp.asarray(_padded([vocab.encode('The cells divide .')]))
  start = decoding.Start(source, jnp.asarray([20]), 1, 20)
  previous, index = jnp.zeros((1,), jnp.int32), jnp.asarray(0)
  model_lp = np.asarray(random_model.log_probs(random_model.init(start), previous, index)[0])
  merged = np.asarray(inner.log_probs(inner.init(start), previous, index)[0])
  words = np.isin(table.kinds, [symbols.SLOT, symbols.PIECE])
  np.testing.assert_allclose(merged[:, words],
                             np.broadcast_to(jax.nn.logsumexp(model_lp[:, words], axis=-1,
                                                              keepdims=True), (1, words.sum())),
                             atol=1e-6)
  np.testing.assert_array_equal(merged[:, ~words], model_lp[:, ~words])
  allowed = np.asarray(step.log_probs(step.init(start), previous, index)[0])
  assert np.sum(np.isfinite(allowed[:, words])) == 1  # the first word's first piece
  assert np.exp(allowed[np.isfinite(allowed)]).sum() <= 1 + 1e-5
