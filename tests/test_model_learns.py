"""The model learns: post-LN and pre-LN on a copy task, and through the Flax NNX bridge."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn
from flax import nnx

from transformer_jax import Transformer, TransformerConfig

VOCAB, LENGTH, BATCH = 16, 8, 32


def _copy_batch(key):
  """Random sequences ending in EOS (id 1); the target is the source."""
  tokens = jax.random.randint(key, (BATCH, LENGTH - 1), 3, VOCAB)
  return jnp.concatenate([tokens, jnp.ones((BATCH, 1), jnp.int32)], axis=1)


def _small_config(**overrides):
  return TransformerConfig(vocab_size=VOCAB, d_model=32, d_ff=64, num_heads=4,
                           num_encoder_layers=2, num_decoder_layers=2, max_len=LENGTH,
                           dropout_rate=0.0, **overrides)


def _xent(logits, targets):
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@pytest.mark.parametrize('pre_norm', [False, True])
def test_post_ln_and_pre_ln_learn_to_copy(pre_norm):
  model = Transformer(_small_config(pre_norm=pre_norm))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), _copy_batch(jax.random.key(1)),
                                    _copy_batch(jax.random.key(1)))['params'])
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, 300)
  tx = optax.adam(schedule, b1=0.9, b2=0.98, eps=1e-9)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    batch = _copy_batch(key)
    loss, grads = jax.value_and_grad(
        lambda p: _xent(model.apply({'params': p}, batch, batch), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(300):
    params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
    losses.append(float(loss))
  assert losses[0] > 2.0  # ~ln(13) at the start
  # Both blocks get below a tenth of the initial loss (post-LN ~0.15, pre-LN ~0.05).
  assert sum(losses[-10:]) / 10 < 0.3, f'{"pre" if pre_norm else "post"}-LN did not learn'


def test_nnx_bridge_wraps_and_trains_the_model():
  """A Flax NNX project can use the linen model via `nnx.bridge.ToNNX`."""
  src = _copy_batch(jax.random.key(2))
  with nnx.use_eager_sharding(False):  # logical axis names without a mesh
    model = nnx.bridge.ToNNX(Transformer(_small_config()), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, src, src)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(src, src), src))(model)
    optimizer.update(model, grads)
    return loss

  first = float(step(model, optimizer))
  for _ in range(100):
    last = float(step(model, optimizer))
  assert last < 0.35 * first
