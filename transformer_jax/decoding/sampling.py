"""Which tokens sampling draws from: temperature, top-k and nucleus (top-p) filtering."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from transformer_jax.decoding.steps import NEG_INF

Array = jax.Array

# Probability mass that counts as reaching top_p: float32 sums of probabilities that add
# up to top_p exactly come out a few ulps short of it.
MASS_TOLERANCE = 1e-6


def _keep_first(logits: Array, count: Array, kth: Array) -> Array:
  """Mask [..., V] of the `count` [..., 1] most likely tokens, given the value `kth` of
  the count-th: everything above it, and of the tokens equal to it the lowest ids."""
  above = logits > kth
  ties = logits == kth
  needed = count - jnp.sum(above, axis=-1, keepdims=True)
  return above | (ties & (jnp.cumsum(ties, axis=-1) <= needed))


def filter_logits(logits: Array, temperature: Array, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """Sampling logits [..., V] (log-probabilities, or logits: only differences matter):
  divided by `temperature` after shifting the largest to 0, so that tiny temperatures
  leave the most likely token alone (greedy in the limit) instead of overflowing; only the
  `top_k` most likely kept (0 or >= V: all); of those, only the nucleus (Holtzman et al.
  2020): the fewest most likely tokens whose probability reaches `top_p` (1: all; within
  `MASS_TOLERANCE`). Ties at a cut are broken by id, the lower kept first, so exactly
  top_k / the smallest nucleus is kept; the most likely token always stays. Dropped
  tokens get -inf."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  logits = (logits - jnp.where(jnp.isfinite(top), top, 0.0)) / temperature
  vocab = logits.shape[-1]
  if 0 < top_k < vocab:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(_keep_first(logits, jnp.full_like(kth, top_k, jnp.int32), kth),
                       logits, NEG_INF)
  if top_p < 1:
    ordered = -jnp.sort(-logits, axis=-1)
    mass = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    count = jnp.minimum(jnp.sum(mass < top_p - MASS_TOLERANCE, axis=-1, keepdims=True) + 1,
                        vocab)
    kth = jnp.take_along_axis(ordered, count - 1, axis=-1)
    logits = jnp.where(_keep_first(logits, count, kth), logits, NEG_INF)
  return logits
