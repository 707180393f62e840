"""The chunked output projection + loss equals the loss over the full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from transformer_jax import Transformer
from transformer_jax.training import loss, train_lib
from transformer_jax.model import output_logits

ROWS, LENGTH, DIM, VOCAB = 3, 7, 8, 11


def _targets(rng, rows, length, vocab):
  """Random ids >= 1 with each row padded (0) after a random length, one row all padding."""
  ids = rng.integers(1, vocab, (rows, length))
  lengths = rng.integers(1, length + 1, (rows, 1))
  lengths[-1] = 0
  return jnp.asarray(np.where(np.arange(length) < lengths, ids, 0), jnp.int32)


def _assert_trees_close(actual, expected):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
@pytest.mark.parametrize('with_bias', [False, True])
def test_chunked_terms_and_gradients_equal_full_logits(label_smoothing, with_bias):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(ROWS, LENGTH, DIM)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(VOCAB, DIM)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(VOCAB,)), jnp.float32) if with_bias else None
  targets = _targets(rng, ROWS, LENGTH, VOCAB)
  # Every other real token is the argmax, so accuracy counts are neither 0 nor all.
  best = jnp.argmax(output_logits(hidden, kernel, bias), axis=-1)
  targets = jnp.where((targets > 0) & (jnp.arange(LENGTH) % 2 == 0), best, targets)

  def full(h, k, b):
    return loss.loss_terms(output_logits(h, k, b), targets, label_smoothing)

  def chunked(h, k, b):  # 6 tokens = 2 positions a chunk: 4 chunks, the last one padded
    return loss.chunked_loss_terms(h, k, b, targets, label_smoothing, chunk_tokens=6)

  def terms_and_grads(fn):
    grad = jax.grad(lambda *a: fn(*a)['loss'], argnums=(0, 1, 2))
    return jax.jit(fn)(hidden, kernel, bias), jax.jit(grad)(hidden, kernel, bias)

  terms_f, grads_f = terms_and_grads(full)
  terms_c, grads_c = terms_and_grads(chunked)
  assert 0 < terms_f['correct'] < terms_f['tokens'] == np.sum(targets > 0)
  assert terms_c['correct'] == terms_f['correct'] and terms_c['tokens'] == terms_f['tokens']
  _assert_trees_close(terms_c, terms_f)
  _assert_trees_close(grads_c, grads_f)
  assert np.abs(grads_f[0]).max() > 0 and np.all(grads_f[0][-1] == 0)  # padded row: no grad


@pytest.mark.parametrize('output', ['tied', 'tied with bias', 'untied'])
def test_model_loss_and_parameter_gradients_equal_full_logits(tiny_config, output):
  tied = output != 'untied'
  cfg = tiny_config.replace(logits_bias=output == 'tied with bias') if tied else (
      tiny_config.replace(share_embeddings=False, logits_via_embedding=False,
                          target_vocab_size=VOCAB * 3))
  model = Transformer(cfg)
  rng = np.random.default_rng(1)
  batch = {'inputs': _targets(rng, ROWS, LENGTH, cfg.vocab_size),
           'targets': _targets(rng, ROWS, LENGTH, cfg.output_vocab_size)}
  params = nn.meta.unbox(model.init(jax.random.key(0), batch['inputs'], batch['targets']))
  params = params['params']

  def full(p):
    logits = model.apply({'params': p}, batch['inputs'], batch['targets'])
    terms = loss.loss_terms(logits, batch['targets'], 0.1)
    return terms['loss'], terms

  def chunked(p):
    terms = train_lib._loss_terms(model, p, batch, 0.1, 4, True)  # 2 positions a chunk
    return terms['loss'], terms

  (_, terms_f), grads_f = jax.jit(jax.value_and_grad(full, has_aux=True))(params)
  (_, terms_c), grads_c = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
  _assert_trees_close(terms_c, terms_f)
  _assert_trees_close(grads_c, grads_f)
  output = grads_c['source_embed' if tied else 'decoder']
  assert np.abs(jax.tree.leaves(output)[0]).max() > 0  # the output kernel gets gradients
