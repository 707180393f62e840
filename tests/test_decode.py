"""Greedy, sampling and beam-search decoding against the model and against brute force."""

import functools
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import struct

from transformer_jax import Transformer, TransformerConfig, backend, decoding
from transformer_jax.decoding import searches as search_lib
from transformer_jax.model_config import EOS_ID

EOS = EOS_ID
S = 8  # padded source length of most tests (few shapes: few compiles)


def _adjust_output(params, config, eos_bias, scale=1.0):
  """Sharpen the output distribution by `scale` and add about `eos_bias` to the EOS logit.

  The last decoder sub-layer ends in LayerNorm (post-LN): scaling its gain and bias scales
  the logits, and shifting its bias along the (tied) EOS embedding moves the EOS logit
  (and the others only a little).
  """
  eos_row = params['source_embed']['embedding'][EOS]
  shift = eos_bias * eos_row / jnp.sum(eos_row ** 2)  # logits = y · embedding^T
  norm = ('decoder', f'layer_{config.num_decoder_layers - 1}', 'ffn_block', 'norm')
  def adjust(path, x):
    name = tuple(k.key for k in path)
    if name[:-1] != norm:
      return x
    return x * scale + shift if name[-1] == 'bias' else x * scale
  return jax.tree_util.tree_map_with_path(adjust, params)


@pytest.fixture(scope='module')
def params(tiny_config, tiny_params):
  return _adjust_output(tiny_params, tiny_config, 2.5)


def _model(params, config):
  return decoding.model_or_ensemble(params, config)


def greedy(params, config, src, **kw):
  """(tokens [B, L], log-probs [B]) of greedy decoding."""
  result = decoding.greedy(_model(params, config), src, **kw)
  return result.best, result.log_probs[:, 0]


def sample(params, config, src, key, **kw):
  result = decoding.sample(_model(params, config), src, key, **kw)
  return result.best, result.log_probs[:, 0]


def beam(params, config, src, alpha=0.6, **kw):
  """(best tokens [B, L], their scores [B]) of beam search."""
  result = decoding.beam_search(_model(params, config), src, alpha=alpha, **kw)
  return result.best, result.scores(alpha)[:, 0]


def n_best(params, config, src, alpha=0.6, **kw):
  """(tokens [B, n, L], scores [B, n], log-probs [B, n]) of beam search's n-best list."""
  result = decoding.beam_search(_model(params, config), src, alpha=alpha, **kw)
  return result.tokens, result.scores(alpha), result.log_probs


@pytest.fixture(scope='module')
def sources():
  """Three sentences of 8, 5 and 3 tokens, padded to S."""
  src = np.zeros((3, S), np.int32)
  rng = np.random.default_rng(0)
  for row, n in enumerate((8, 5, 3)):
    src[row, :n] = rng.integers(3, 40, n)
  return jnp.asarray(src)


def _check_well_formed(tokens, limits):
  """EOS exactly once (forced at the limit), zeros only after it, length within the limit."""
  for row, limit in zip(np.asarray(tokens), limits):
    eos = np.flatnonzero(row == EOS)
    assert eos.size == 1
    end = eos[0] + 1
    assert np.all(row[:end] != 0) and np.all(row[end:] == 0)
    assert end <= limit


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_logits(config, params, src, tokens):
  """[B, L, V] logits of outputs [B, L] with padding banned."""
  logits = Transformer(config).apply({'params': params}, src, tokens)
  return logits.at[..., 0].set(-jnp.inf)


def _teacher_forced_log_prob(config, params, src, tokens):
  """Sum of log p(token) under the model (pad banned), per row of [B, L] outputs."""
  log_probs = jax.nn.log_softmax(_teacher_forced_logits(config, params, src, tokens), axis=-1)
  picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(tokens > 0, picked, 0.0), axis=-1)


@pytest.mark.parametrize('method', ['greedy', 'beam', 'sample'])
def test_eos_and_max_length_are_honoured(tiny_config, params, sources, method):
  run = {'greedy': lambda **kw: greedy(params, tiny_config, sources, **kw),
         'beam': lambda **kw: beam(params, tiny_config, sources, **kw),
         'sample': lambda **kw: sample(params, tiny_config, sources, jax.random.key(3),
                                       **kw)}[method]
  tokens, _ = run(max_extra_len=4)
  _check_well_formed(tokens, [8 + 4, 5 + 4, 3 + 4])
  assert np.any(np.asarray(tokens) == EOS)  # the EOS bias makes some sentences end early
  # A cache shorter than the per-sentence limits caps every sentence at its length.
  tokens, _ = run(max_extra_len=4, max_decode_len=6)
  assert tokens.shape == (3, 6)
  _check_well_formed(tokens, [6, 6, 6])
  # min_len bans EOS: every sentence then runs to its limit, where EOS is forced.
  tokens, _ = run(max_extra_len=4, min_len=S + 4)
  _check_well_formed(tokens, [12, 9, 7])
  np.testing.assert_array_equal(np.sum(np.asarray(tokens) != 0, 1), [12, 9, 7])


def test_greedy_scores_are_model_log_probs(tiny_config, params, sources):
  for kw in ({}, {'min_len': S + 4}):  # also outputs cut at the limit: EOS scored
    tokens, scores = greedy(params, tiny_config, sources, max_extra_len=4, **kw)
    expected = _teacher_forced_log_prob(tiny_config, params, sources, tokens)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_beam_size_one_equals_greedy(tiny_config, params):
  """On 16 sentences where EOS is often the first or second choice, with and without a
  length penalty (which could make a longer hypothesis outscore an early EOS)."""
  rng = np.random.default_rng(1)
  src = np.zeros((16, S), np.int32)
  for row, n in enumerate(rng.integers(2, S + 1, 16)):
    src[row, :n] = rng.integers(3, 40, n)
  tokens, greedy_log_probs = greedy(params, tiny_config, src, max_extra_len=4)
  lengths = np.sum(np.asarray(tokens) != 0, axis=-1)
  for alpha in (0.0, 0.6):
    found, beam_scores = beam(params, tiny_config, src, beam_size=1, alpha=alpha,
                              max_extra_len=4)
    np.testing.assert_array_equal(found, tokens)
    np.testing.assert_allclose(beam_scores * decoding.length_penalty(lengths, alpha),
                               greedy_log_probs, atol=1e-5)


def test_sampling_with_top_k_1_or_temperature_0_equals_greedy(tiny_config, params, sources):
  expected, _ = greedy(params, tiny_config, sources, max_extra_len=4)
  for seed in range(2):
    sampled, _ = sample(params, tiny_config, sources, jax.random.key(seed), top_k=1,
                        temperature=1.5, max_extra_len=4)
    np.testing.assert_array_equal(sampled, expected)
  for temperature in (0.0, 1e-40, 1e-30):  # tiny temperatures: greedy, no overflow
    sampled, _ = sample(params, tiny_config, sources, jax.random.key(0),
                        temperature=temperature, top_k=5, max_extra_len=4)
    np.testing.assert_array_equal(sampled, expected)
  with pytest.raises(ValueError, match='temperature must be a finite number >= 0'):
    sample(params, tiny_config, sources, jax.random.key(0), temperature=-1.0)


def test_sampling_is_random_and_stays_in_top_k(tiny_config, tiny_params, sources):
  params = tiny_params  # no EOS bias: several tokens stay likely at every step
  outputs = [sample(params, tiny_config, sources, jax.random.key(seed), top_k=3,
                    max_extra_len=4)[0] for seed in range(3)]
  assert len({np.asarray(o).tobytes() for o in outputs}) > 1
  before_limit = jnp.arange(S + 4) < jnp.array([[12], [9], [7]]) - 1  # the last: EOS forced
  for tokens in outputs:
    logits = _teacher_forced_logits(tiny_config, params, sources, tokens)
    rank = jnp.sum(logits > jnp.take_along_axis(logits, tokens[..., None], -1), axis=-1)
    assert int(jnp.max(jnp.where((tokens > 0) & before_limit, rank, 0))) < 3


def test_filter_logits_matches_temperature_and_top_k():
  logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.1]))
  keys = jax.random.split(jax.random.key(0), 20000)
  draw = jax.vmap(lambda key, t, k: jax.random.categorical(key,
                                                          decoding.filter_logits(logits, t, k)),
                  in_axes=(0, None, None))
  for temperature in (0.5, 2.0):
    counts = np.bincount(draw(keys, temperature, 0), minlength=4) / len(keys)
    np.testing.assert_allclose(counts, jax.nn.softmax(logits / temperature), atol=0.015)
  counts = np.bincount(draw(keys, 1.0, 2), minlength=4) / len(keys)
  np.testing.assert_allclose(counts, [2 / 3, 1 / 3, 0, 0], atol=0.015)
  np.testing.assert_allclose(decoding.filter_logits(logits, 1.0, 10), logits - logits[0],
                             rtol=1e-6)  # top_k > V: all kept (shifted: the largest is 0)


def test_top_p_keeps_the_nucleus():
  """Probabilities 0.5, 0.25, 0.15, 0.1: the nucleus of 0.7 is the first two (0.5 < 0.7
  before the second, 0.75 before the third), of 0.5 the first alone; top-k filters first
  (top 3: 0.56, 0.28, 0.17)."""
  logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.1]))
  for top_k, top_p, kept in ((0, 0.7, 2), (0, 0.5, 1), (0, 0.76, 3), (0, 1.0, 4), (2, 0.9, 2),
                             (3, 0.85, 3), (3, 0.8, 2)):
    filtered = decoding.filter_logits(logits, 1.0, top_k, top_p)
    np.testing.assert_allclose(filtered[:kept], logits[:kept] - logits[0], rtol=1e-6)
    assert np.all(np.isneginf(filtered[kept:]))
  # Temperature first: at 0.5 the probabilities are 0.66, 0.17, 0.10, 0.07.
  assert np.sum(np.isfinite(decoding.filter_logits(logits, 0.5, 0, 0.7))) == 1


def test_top_p_and_top_k_keep_the_smallest_set_at_exact_boundaries_and_break_ties_by_id():
  """[0.3, 0.1, 0.1, 0.5] with top_p 0.8 is {0.5, 0.3}: the mass reaches 0.8 exactly
  (float32 sums fall a few ulps short of it); ties at a cut keep the lower ids, so top_k 2
  of [0.4, 0.2, 0.2, 0.2] is ids 0 and 1; the most likely token always stays. Then 300
  random exact-boundary cases: the kept set is the smallest whose mass reaches top_p."""
  def kept(probs, top_k=0, top_p=1.0):
    filtered = decoding.filter_logits(jnp.log(jnp.asarray(probs, jnp.float32)), 1.0, top_k,
                                      top_p)
    return set(np.flatnonzero(np.isfinite(np.asarray(filtered))).tolist())
  assert kept([0.3, 0.1, 0.1, 0.5], top_p=0.8) == {0, 3}
  assert kept([0.4, 0.2, 0.2, 0.2], top_k=2) == {0, 1}
  assert kept([0.4, 0.2, 0.2, 0.2], top_p=0.6) == {0, 1}
  assert kept([0.25] * 4, top_p=0.01) == {0}
  rng = np.random.default_rng(0)
  for _ in range(300):
    units = rng.multinomial(20, rng.dirichlet(np.ones(6)))  # probabilities k / 20
    probs = units / 20
    order = np.argsort(-probs, kind='stable')
    mass = np.cumsum(units[order])
    cut = rng.integers(1, int(np.sum(units > 0)) + 1)  # the nucleus is the first `cut`
    top_p = mass[cut - 1] / 20
    smallest = int(np.argmax(mass >= mass[cut - 1])) + 1
    assert kept(probs, top_p=float(top_p)) == set(order[:smallest].tolist()), (probs, top_p)


def test_sampling_is_reproducible_and_unfiltered_at_top_p_1_and_top_k_v(tiny_config,
                                                                          tiny_params, sources):
  plain = sample(tiny_params, tiny_config, sources, jax.random.key(5), max_extra_len=4)
  again = sample(tiny_params, tiny_config, sources, jax.random.key(5), max_extra_len=4)
  unfiltered = sample(tiny_params, tiny_config, sources, jax.random.key(5), top_p=1.0,
                      top_k=tiny_config.vocab_size, max_extra_len=4)
  for other in (again, unfiltered):
    np.testing.assert_array_equal(other[0], plain[0])
    np.testing.assert_array_equal(other[1], plain[1])
  expected = greedy(tiny_params, tiny_config, sources, max_extra_len=4)
  nucleus = sample(tiny_params, tiny_config, sources, jax.random.key(5), top_p=1e-6,
                   max_extra_len=4)  # the most likely token alone
  np.testing.assert_array_equal(nucleus[0], expected[0])
  np.testing.assert_allclose(nucleus[1], expected[1], atol=1e-5)
  with pytest.raises(ValueError, match=r'top_p must be in \(0, 1\]'):
    sample(tiny_params, tiny_config, sources, jax.random.key(5), top_p=0.0)


@pytest.fixture(scope='module')
def other_member(tiny_config):
  """A smaller model with the tiny model's vocabulary: an ensemble member of another size."""
  config = tiny_config.replace(d_model=16, d_ff=32, num_heads=2, num_encoder_layers=1,
                               num_decoder_layers=1)
  ones = jnp.ones((1, 8), jnp.int32)
  return config, nn.meta.unbox(jax.jit(Transformer(config).init)(jax.random.key(9), ones,
                                                                   ones)['params'])


def test_ensembles_of_one_model_and_of_two_copies_decode_as_the_model(tiny_config,
                                                                       tiny_params, sources):
  params = tiny_params
  kw = dict(max_extra_len=4, min_len=2)  # outputs of 3 tokens or more
  key = jax.random.key(2)
  runs = {
      'greedy': lambda p, c: greedy(p, c, sources, **kw),
      'beam': lambda p, c: beam(p, c, sources, **kw),
      'sample': lambda p, c: sample(p, c, sources, key, top_k=5, **kw)}
  for name, run in runs.items():
    tokens, scores = run(params, tiny_config)
    assert np.all(np.sum(np.asarray(tokens) != 0, axis=1) > 2)
    one = run([params], [tiny_config])
    np.testing.assert_array_equal(one[0], tokens, err_msg=name)
    np.testing.assert_array_equal(one[1], scores, err_msg=name)
    two = run([params, params], (tiny_config, tiny_config))
    np.testing.assert_array_equal(two[0], tokens, err_msg=name)
    np.testing.assert_allclose(two[1], scores, atol=1e-5, err_msg=name)


def test_an_ensemble_scores_the_mean_of_its_members_log_probs(tiny_config, tiny_params,
                                                              sources, other_member):
  """Members of different sizes: each token's score is the mean of the members'
  log-probabilities, so a sequence's is the mean of the members' teacher-forced ones."""
  params = _adjust_output(tiny_params, tiny_config, -1.5)  # EOS less likely: long outputs
  other_config, other_params = other_member
  members = ([params, other_params], [tiny_config, other_config])
  kw = dict(max_extra_len=4)
  found, greedy_scores = greedy(*members, sources, **kw)
  tokens, _, log_probs = n_best(*members, sources, n_best=2, **kw)
  for outputs, scores, src in ((found, greedy_scores, sources),
                               (tokens.reshape(6, -1), log_probs.reshape(-1),
                                jnp.repeat(sources, 2, 0))):
    expected = (_teacher_forced_log_prob(tiny_config, params, src, outputs)
                + _teacher_forced_log_prob(other_config, other_params, src, outputs)) / 2
    np.testing.assert_allclose(scores, expected, atol=1e-5)
  assert np.all(np.sum(np.asarray(found) != 0, axis=1) > 2)
  alone, _ = greedy(params, tiny_config, sources, **kw)
  assert not np.array_equal(alone, found)  # the other member changes the outputs
  with pytest.raises(ValueError, match='must share their vocabularies'):
    greedy([params, other_params], [tiny_config, other_config.replace(vocab_size=41)],
           sources)
  with pytest.raises(ValueError, match='one params per config, got 1 params and 2 configs'):
    beam([params], [tiny_config, other_config], sources)


def test_chunked_top_k_equals_lax_top_k_with_ties_and_minus_inf(monkeypatch):
  """Beam search ranks a hypothesis' tokens through `backend.top_k` (chunk maxima first,
  where the policy asks for it): it must give lax.top_k's values, indices and tie order,
  including many equal values, and the same on its lax.top_k path (a vocabulary that does
  not split into chunks)."""
  monkeypatch.setattr(backend, 'policy', lambda: backend.Policy(chunked_top_k=True))
  rng = np.random.default_rng(0)
  for k, chunk in ((1, 4), (3, 4), (5, 8), (8, 4), (3, 5)):
    monkeypatch.setattr(backend, 'TOP_K_CHUNK', chunk)
    top = jax.jit(backend.top_k, static_argnums=1)
    ties = rng.integers(-3, 3, (6, 64)).astype(np.float32)  # many ties across chunks
    ties[:, ::7] = -np.inf
    for x in (ties, rng.normal(size=(6, 64)).astype(np.float32)):
      want = jax.lax.top_k(x, k)
      got = top(x, k)
      np.testing.assert_array_equal(got[0], want[0])
      np.testing.assert_array_equal(got[1], want[1])


def test_padding_is_never_a_candidate_and_eos_is_banned_before_min_len(tiny_config, params,
                                                                       sources):
  model = decoding.Model(params, tiny_config)
  state = model.init(decoding.Start(sources, jnp.full((3,), 12), 1, 12))
  log_probs, _ = model.log_probs(state, jnp.zeros((3,), jnp.int32), jnp.int32(0))
  assert np.all(np.isneginf(log_probs[:, 0]))
  np.testing.assert_allclose(jax.nn.logsumexp(log_probs, axis=-1), 0.0, atol=1e-5)
  at_limit = jnp.array([False, False, True])
  early = search_lib._ban_early_eos(log_probs, 2, 2, at_limit)
  late = search_lib._ban_early_eos(log_probs, 3, 2, at_limit)
  assert np.all(np.isneginf(early[:2, EOS])) and np.array_equal(early[2], log_probs[2])
  np.testing.assert_array_equal(early[:, 2:], log_probs[:, 2:])
  np.testing.assert_array_equal(late, log_probs)


def test_translation_ignores_batch_neighbours_and_padding(tiny_config, params, sources):
  batch, batch_scores = beam(params, tiny_config, sources, max_extra_len=4)
  for row in range(3):
    alone = jnp.pad(sources[row:row + 1], ((0, 0), (0, 3)))  # other batch, more padding
    tokens, score = beam(params, tiny_config, alone, max_extra_len=4)
    np.testing.assert_array_equal(tokens[0, :S + 4], batch[row])
    assert not np.any(np.asarray(tokens[0, S + 4:]))
    np.testing.assert_allclose(score[0], batch_scores[row], atol=1e-5)


def test_search_picks_the_strategy_of_its_options_and_trim(tiny_config, params, sources):
  model = decoding.Model(params, tiny_config)
  options = decoding.Search(max_extra_len=4)
  np.testing.assert_array_equal(decoding.search(model, sources, options).best,
                                beam(params, tiny_config, sources, max_extra_len=4)[0])
  options = decoding.Search(beam_size=1, max_extra_len=4)
  np.testing.assert_array_equal(decoding.search(model, sources, options).best,
                                greedy(params, tiny_config, sources, max_extra_len=4)[0])
  with pytest.raises(ValueError, match='sampling needs an rng'):
    decoding.search(model, sources, decoding.Search(sample=True))
  assert decoding.trim(np.array([[5, 6, EOS, 0], [7, 0, 0, 0], [3, 4, 5, 6]])) == [
      [5, 6], [7], [3, 4, 5, 6]]


def test_beam_search_finds_the_exhaustive_optimum_and_n_best_list():
  """Vocabulary 6 (4 real words + pad + EOS), outputs of at most 4 tokens: a beam of 320
  keeps every candidate of every step, so beam search must return the best-scoring
  sequence overall, and its n-best list the best n, for any length penalty."""
  config = TransformerConfig(vocab_size=6, d_model=16, d_ff=32, num_heads=2,
                             num_encoder_layers=1, num_decoder_layers=1, max_len=16,
                             dropout_rate=0.0, logits_via_embedding=False)
  ones = jnp.ones((1, 4), jnp.int32)
  init = jax.jit(Transformer(config).init)
  params = nn.meta.unbox(init(jax.random.key(77), ones, ones)['params'])
  logits_layer = params['decoder']['logits']  # sharper outputs: a less flat search space
  params['decoder']['logits'] = {**logits_layer, 'kernel': 2.0 * logits_layer['kernel']}
  src = jnp.array([[3, 4, 5, 0]])
  max_len, n = 4, 5
  # At most max_len tokens, EOS included: at the limit EOS is forced.
  candidates = [list(words) + [EOS] for length in range(max_len)
                for words in itertools.product(range(2, 6), repeat=length)]
  tokens = jnp.array([c + [0] * (max_len - len(c)) for c in candidates])
  log_probs = _teacher_forced_log_prob(config, params, jnp.repeat(src, len(candidates), 0),
                                       tokens)
  lengths = jnp.array([len(c) for c in candidates], jnp.float32)
  first, _ = greedy(params, config, src, max_decode_len=max_len)
  for alpha in (0.0, 0.6, 2.0):
    scores = log_probs / decoding.length_penalty(lengths, alpha)
    best = np.argsort(-np.asarray(scores), kind='stable')[:n]
    if alpha == 0.6:
      assert not np.array_equal(first[0], tokens[best[0]])
    found, found_score = beam(params, config, src, beam_size=320, alpha=alpha,
                              max_decode_len=max_len)
    np.testing.assert_array_equal(found[0], tokens[best[0]])
    np.testing.assert_allclose(found_score[0], scores[best[0]], atol=1e-5)
    listed, listed_scores, listed_log_probs = n_best(
        params, config, src, beam_size=320, alpha=alpha, max_decode_len=max_len, n_best=n)
    np.testing.assert_array_equal(listed[0], tokens[best])
    np.testing.assert_allclose(listed_scores[0], scores[best], atol=1e-5)
    np.testing.assert_allclose(listed_log_probs[0], log_probs[best], atol=1e-5)


TINY = TransformerConfig(vocab_size=7, d_model=16, d_ff=32, num_heads=2, num_encoder_layers=1,
                         num_decoder_layers=1, max_len=16, dropout_rate=0.0)


def _random_tiny_models(keys):
  """Params of TINY models (vocabulary 7, d_model 16, 1+1 layers), stacked along keys."""
  ones = jnp.ones((1, 4), jnp.int32)
  init = lambda key: nn.meta.unbox(Transformer(TINY).init(key, ones, ones)['params'])
  return jax.jit(jax.vmap(init))(keys)


def test_beam_search_continues_while_an_alive_hypothesis_can_win():
  """Issue 26's kind of case: beam 2, alpha 0.6. After step 2 two hypotheses have
  finished, [EOS] and [5, EOS] (score -1.938), but the alive [5, 5] (log-prob -0.979) can
  still beat them; it finishes one step later as [5, 5, EOS] (-1.684). Stopping once K
  hypotheses had finished returned [5, EOS]."""
  params = jax.tree.map(lambda x: x[0], _random_tiny_models(
      jax.random.split(jax.random.key(0), 1500)[1132:1133]))
  src = jnp.array([[3, 4, 5, 6]])
  tokens, scores, log_probs = n_best(params, TINY, src, beam_size=2, alpha=0.6,
                                     max_extra_len=4, n_best=2)
  np.testing.assert_array_equal(tokens[0, :, :3], [[5, 5, EOS], [5, EOS, 0]])
  np.testing.assert_allclose(scores[0], [-1.684, -1.938], atol=1e-3)
  np.testing.assert_allclose(log_probs[0, 0] - log_probs[0, 1], -2.0016 + 2.1253, atol=1e-3)
  best, best_score = beam(params, TINY, src, beam_size=2, alpha=0.6, max_extra_len=4)
  np.testing.assert_array_equal(best, tokens[:, 0])
  np.testing.assert_allclose(best_score, scores[:, 0])


def test_stopping_early_never_changes_what_the_beam_returns():
  """48 random tiny models x 3 sentences x alpha in {0, 0.6, 2}, beam 2 (one vmapped call
  per variant): the result (1-best, and the whole n-best list) equals that of the same beam
  run to every sentence's length limit; so does a loop in length buckets of 1, 2, 4, 8
  steps (the step's cache grown three times)."""
  params = _random_tiny_models(jax.random.split(jax.random.key(1), 48))
  alphas = jnp.repeat(jnp.array([0.0, 0.6, 2.0]), 48)
  params = jax.tree.map(lambda x: jnp.concatenate([x] * 3), params)
  src = jnp.array([[3, 4, 5, 6], [2, 3, 0, 0], [6, 5, 4, 0]])

  def run(n, stop_early, first_horizon=8):
    search = functools.partial(search_lib._beam_search, inputs=src, max_extra_len=4,
                               min_len=0, beam_size=2, length=8, n_best=n,
                               stop_early=stop_early, first_horizon=first_horizon)
    result = jax.jit(jax.vmap(lambda p, alpha: search(decoding.Model(p, TINY), alpha=alpha)))(
        params, alphas)
    return result.tokens, result.scores(alphas[:, None, None]), result.log_probs

  full = run(2, False)
  assert search_lib.horizons(8, 1) == [1, 2, 4, 8] and search_lib.horizons(8) == [8]
  for n, first_horizon in ((1, 8), (2, 8), (2, 1)):
    tokens, scores, log_probs = run(n, True, first_horizon)
    np.testing.assert_array_equal(tokens, full[0][:, :, :n])
    np.testing.assert_allclose(scores, full[1][:, :, :n], atol=1e-6)
    np.testing.assert_allclose(log_probs, full[2][:, :, :n], atol=1e-6)


def test_n_best_lists_are_distinct_sorted_and_score_their_tokens(tiny_config, params,
                                                                 sources):
  tokens, scores, log_probs = n_best(params, tiny_config, sources, beam_size=4,
                                     max_extra_len=4, n_best=4)
  assert tokens.shape == (3, 4, S + 4) and scores.shape == log_probs.shape == (3, 4)
  for row in np.asarray(tokens):
    assert len({r.tobytes() for r in row}) == 4
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
  flat = tokens.reshape(12, -1)
  expected = _teacher_forced_log_prob(tiny_config, params, jnp.repeat(sources, 4, 0), flat)
  np.testing.assert_allclose(log_probs.reshape(-1), expected, atol=1e-5)
  lengths = np.sum(np.asarray(flat) != 0, axis=-1)
  np.testing.assert_allclose(scores.reshape(-1),
                             expected / decoding.length_penalty(lengths, 0.6), atol=1e-5)
  best, best_scores = beam(params, tiny_config, sources, max_extra_len=4)
  np.testing.assert_array_equal(best, tokens[:, 0])
  np.testing.assert_allclose(best_scores, scores[:, 0], atol=1e-6)
  for bad in (0, 5):
    with pytest.raises(ValueError, match=r'n_best must be in \[1, beam_size=4\]'):
      beam(params, tiny_config, sources, n_best=bad)


SHARDED = '''
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from transformer_jax import Transformer, TransformerConfig, decoding
from transformer_jax.decoding import devices, searches
config = TransformerConfig(vocab_size=40, d_model=32, d_ff=64, num_heads=4, num_encoder_layers=2,
                           num_decoder_layers=2, max_len=64, dropout_rate=0.0)
ones = jnp.ones((1, 8), jnp.int32)
params = nn.meta.unbox(jax.jit(Transformer(config).init)(jax.random.key(0), ones, ones)['params'])
src = jax.random.randint(jax.random.key(1), (4, 8), 3, 40).at[1, 5:].set(0)
mesh = Mesh(np.array(jax.devices()), ('data',))
sharded = jax.device_put(src, NamedSharding(mesh, P('data')))
assert len(sharded.sharding.device_set) == 2
model = decoding.Model(params, config)
for fn in (decoding.greedy, decoding.beam_search):
  expected = fn(model, src, max_extra_len=4).best
  got = fn(model, sharded, max_extra_len=4, mesh=mesh).best
  np.testing.assert_array_equal(got, expected)
# n-best lists and ensembles too.
for step, fn, kw in ((model, decoding.beam_search, {'n_best': 2}),
                     (decoding.Ensemble((model, model)), decoding.greedy, {})):
  expected = fn(step, src, max_extra_len=4, **kw)
  got = fn(step, sharded, max_extra_len=4, mesh=mesh, **kw)
  np.testing.assert_array_equal(got.tokens, expected.tokens)
  np.testing.assert_allclose(got.log_probs, expected.log_probs, atol=1e-5)
# Each device decodes its own rows: no collectives, not even to agree on when to stop.
local = devices._per_device(searches._beam_search, mesh, ('data',), 3,
                            (('beam_size', 4), ('length', 12)))
hlo = local.lower(model, sharded, 0.6, 4, 0).compile().as_text()
assert not any(op in hlo for op in ('all-gather', 'all-reduce', 'collective')), 'collectives'
print('ok')
'''


@pytest.mark.slow
def test_decoding_a_batch_sharded_over_two_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='2')
  out = subprocess.run([sys.executable, '-c', SHARDED], capture_output=True, text=True,
                       timeout=300, env=env)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


@struct.dataclass
class _AllowAll:
  """A constraint that allows every token (and counts the tokens it was told of)."""
  vocab: int = struct.field(pytree_node=False)

  def init(self, start):
    return jnp.zeros((start.inputs.shape[0] * start.hypotheses,), jnp.int32)

  def update(self, state, token):
    return state + 1

  def allowed(self, state):
    return jnp.ones((state.shape[0], self.vocab), bool)


@struct.dataclass
class _NoRepeats:
  """A constraint that bans the token just emitted: carried per hypothesis, so beam search
  must reorder it with the beams."""
  vocab: int = struct.field(pytree_node=False)

  def init(self, start):
    return jnp.zeros((start.inputs.shape[0] * start.hypotheses,), jnp.int32)

  def update(self, state, token):
    return token

  def allowed(self, state):
    return (jnp.arange(self.vocab)[None] != state[:, None]) | (state[:, None] == 0)


def test_a_constraint_that_allows_everything_changes_nothing(tiny_config, params, sources):
  model = decoding.Model(params, tiny_config)
  free = decoding.Constrained(model, _AllowAll(tiny_config.vocab_size))
  runs = {'greedy': lambda m: decoding.greedy(m, sources, max_extra_len=4),
          'beam': lambda m: decoding.beam_search(m, sources, max_extra_len=4, n_best=3),
          'sample': lambda m: decoding.sample(m, sources, jax.random.key(4), top_k=5,
                                              max_extra_len=4)}
  for name, run in runs.items():
    want, got = run(model), run(free)
    np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=name)
    np.testing.assert_array_equal(got.log_probs, want.log_probs, err_msg=name)


def test_a_constraint_is_carried_per_hypothesis_and_scores_stay_the_models(tiny_config,
                                                                         tiny_params, sources):
  """No token twice in a row, in every hypothesis of the n-best lists (so beam search
  reorders the constraint's state with its beams); the log-probs are the model's
  (teacher-forced, not renormalised), and the unconstrained search does repeat tokens."""
  model = decoding.Model(tiny_params, tiny_config)
  plain = decoding.beam_search(model, sources, max_extra_len=4, n_best=3)
  rows = np.asarray(plain.tokens).reshape(9, -1)
  assert np.any((rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] > 1))
  constrained = decoding.Constrained(model, _NoRepeats(tiny_config.vocab_size))
  for result in (decoding.beam_search(constrained, sources, max_extra_len=4, n_best=3),
                 decoding.greedy(constrained, sources, max_extra_len=4)):
    n = result.tokens.shape[1]
    rows = np.asarray(result.tokens).reshape(3 * n, -1)
    assert not np.any((rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] > 0))
    expected = _teacher_forced_log_prob(tiny_config, tiny_params, jnp.repeat(sources, n, 0),
                                        rows)
    np.testing.assert_allclose(np.asarray(result.log_probs).reshape(-1), expected, atol=1e-5)
