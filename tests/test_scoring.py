"""Force-decoding: scores of given translations and word alignments from cross-attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, decoding, scoring
from transformer_jax.model_config import EOS_ID

EOS = EOS_ID
model_or_ensemble = decoding.model_or_ensemble


@pytest.fixture(scope='module')
def batch():
  """Three source sentences (8, 5 and 3 tokens) and targets of 6, 1 and 4 tokens, EOS last."""
  rng = np.random.default_rng(0)
  src, tgt = np.zeros((3, 8), np.int32), np.zeros((3, 7), np.int32)
  for row, (n, m) in enumerate(((8, 6), (5, 1), (3, 4))):
    src[row, :n] = rng.integers(3, 40, n)
    tgt[row, :m - 1] = rng.integers(2, 40, m - 1)
    tgt[row, m - 1] = EOS
  return jnp.asarray(src), jnp.asarray(tgt)


def test_scores_are_the_forward_pass_log_probs(tiny_config, tiny_params, batch):
  """Equal to log_softmax of the teacher-forced logits (padding never a candidate) summed
  over the target's tokens, EOS included; zero at padding; `normalise` divides by length."""
  src, tgt = batch
  total, per_token = scoring.score(model_or_ensemble(tiny_params, tiny_config), src, tgt)
  logits = np.asarray(Transformer(tiny_config).apply({'params': tiny_params}, src, tgt),
                      np.float64)[..., 1:]  # every id but padding
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  tgt = np.asarray(tgt)
  picked = np.take_along_axis(log_probs, np.maximum(tgt - 1, 0)[..., None], -1)[..., 0]
  expected = np.where(tgt > 0, picked, 0.0)
  np.testing.assert_allclose(per_token, expected, atol=1e-5)
  np.testing.assert_allclose(total, expected.sum(-1), atol=1e-5)
  mean, _ = scoring.score(model_or_ensemble(tiny_params, tiny_config), src, tgt, normalise=True)
  np.testing.assert_allclose(mean, expected.sum(-1) / [6, 1, 4], atol=1e-5)
  # An ensemble's: the mean of its members' (here the model and a scaled copy of it).
  other = jax.tree.map(lambda x: 0.9 * x, tiny_params)
  ensemble, _ = scoring.score(model_or_ensemble([tiny_params, other], [tiny_config] * 2), src, tgt)
  np.testing.assert_allclose(
      ensemble, (total + scoring.score(model_or_ensemble(other, tiny_config), src, tgt)[0]) / 2, atol=1e-5)
  assert not np.allclose(ensemble, total)


def test_a_beam_search_translation_scores_its_log_prob(tiny_config, tiny_params, batch):
  src = batch[0]
  result = decoding.beam_search(decoding.Model(tiny_params, tiny_config), src, beam_size=2,
                                max_extra_len=4, n_best=2)
  tokens, log_probs = result.tokens, result.log_probs
  total, _ = scoring.score(model_or_ensemble(tiny_params, tiny_config), jnp.repeat(src, 2, 0),
                           tokens.reshape(6, -1))
  np.testing.assert_allclose(total, log_probs.reshape(-1), atol=1e-5)


def test_cross_attention_is_the_penultimate_layers_head_average(tiny_config, tiny_params,
                                                                batch):
  src, tgt = batch
  weights = scoring.cross_attention(decoding.Model(tiny_params, tiny_config), src, tgt)
  assert weights.shape == (3, 7, 8)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, atol=1e-5)
  assert np.all(np.asarray(weights)[np.broadcast_to(np.asarray(src)[:, None] == 0,
                                                    weights.shape)] == 0)
  _, state = Transformer(tiny_config).apply({'params': tiny_params}, src, tgt,
                                            mutable=['intermediates'])
  sown = state['intermediates']['decoder']['layer_0']['cross_attention']
  np.testing.assert_allclose(weights, jnp.mean(sown['attention_weights'][0], 1), atol=1e-6)
  assert not np.allclose(weights, scoring.cross_attention(decoding.Model(tiny_params, tiny_config), src, tgt,
                                                          layer=1))
  with pytest.raises(ValueError, match=r'layer must be in \[0, 2\), got 2'):
    scoring.cross_attention(decoding.Model(tiny_params, tiny_config), src, tgt, layer=2)
  # A model's alignments name words within bounds (each token its own word here).
  for row, (n, m) in enumerate(((8, 6), (5, 1), (3, 4))):
    pairs = scoring.align(weights[row, :m, :n], list(range(n - 1)) + [-1],
                          list(range(m - 1)) + [-1])
    assert len(pairs) == m - 1
    assert all(0 <= i < n - 1 and 0 <= j < m - 1 for i, j in pairs)


def test_alignment_of_identity_like_attention_maps_pieces_to_words():
  """Source '▁the ▁house s </s>' (words: the, houses), target '▁das ▁Haus ▁ er </s>' (das,
  Haus, er: a lone '▁' covers only a space), attention mostly on the diagonal plus noise."""
  source_words = scoring.span_words('the houses', [(0, 3), (3, 9), (9, 10)]) + [-1]
  target_words = scoring.span_words('das Haus er', [(0, 3), (3, 8), (8, 9), (9, 11)]) + [-1]
  assert source_words == [0, 1, 1, -1] and target_words == [0, 1, -1, 2, -1]
  rng = np.random.default_rng(0)
  weights = 0.1 * rng.random((5, 4))
  for t, s in enumerate((0, 1, 2, 2, 3)):  # target token t attends to source token s
    weights[t, s] += 1.0
  weights[3, 3] = 5.0  # 'er' attends to EOS most: ignored, its best word token counts
  weights[3, 1] = 2.0
  assert scoring.align(weights, source_words, target_words) == [(0, 0), (1, 1), (1, 2)]
  assert scoring.pharaoh([(0, 0), (1, 1), (1, 2)]) == '0-0 1-1 1-2'
  assert scoring.align(weights, [-1] * 4, target_words) == []
  with pytest.raises(ValueError, match=r'weights of shape \(5, 4\) do not match 5 target '
                                       'and 3 source tokens'):
    scoring.align(weights, source_words[:3], target_words)
