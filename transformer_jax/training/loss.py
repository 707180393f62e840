"""The training loss (paper §5.4), fused with the output projection over chunks of target
positions.

`loss_terms`: cross-entropy against the smoothed target distribution
q = (1 - ε)·onehot(y) + ε/V, summed over real (non-padding, id != 0) target tokens
(divided by their number in `metrics.summarize`); `nll` is the plain cross-entropy.

`chunked_loss_terms` computes what `loss_terms(output_logits(hidden, kernel, bias),
targets, ε)` computes — summed label-smoothed loss, nll, argmax hits and real
tokens — without ever holding the float32 [tokens, V] logits: a `lax.scan` walks the
target positions in chunks of ~`chunk_tokens` tokens, and each chunk's logits are
rebuilt in the backward pass (`jax.checkpoint`), so the largest temporaries are one
chunk's [B, c, V]. Gradients flow to the hidden states and to the (tied or untied)
output kernel and bias as through the unchunked loss.

Chunks cut the length axis, never the batch axis, so each device keeps its own rows
(batch sharding is untouched); `chunk_tokens` counts the tokens of the global batch.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from transformer_jax.model import output_logits

Array = jax.Array

# Tokens (global batch) per chunk: [8192, 37000] float32 logits are 1.2 GB.
CHUNK_TOKENS = 8192


def loss_terms(logits: Array, targets: Array, label_smoothing: float) -> dict[str, Array]:
  """Summed metrics over real target tokens of logits [..., T, V] and targets [..., T].

  Returns scalars: `loss` (label-smoothed cross-entropy, sum), `nll` (plain
  cross-entropy, sum), `correct` (argmax hits) and `tokens` (number of real tokens).
  """
  # With q = (1 - ε)·onehot(y) + ε/V and log p = logits - lse:
  #   -Σ q·log p = (1 - ε)·nll + ε·(lse - mean(logits)),  nll = lse - logits[y].
  # log-softmax is never materialised, nor a one-hot [.., V] array.
  weights = (targets > 0).astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = lse - picked
  loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - jnp.mean(logits, axis=-1))
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {'loss': jnp.sum(loss * weights), 'nll': jnp.sum(nll * weights),
          'correct': jnp.sum(correct * weights), 'tokens': jnp.sum(weights)}


def chunked_loss_terms(hidden: Array, kernel: Array, bias: Optional[Array], targets: Array,
                       label_smoothing: float,
                       chunk_tokens: int = CHUNK_TOKENS) -> dict[str, Array]:
  """Summed loss terms (see `loss_terms`) of hidden [B, T, D] projected by
  kernel [V, D] (+ bias [V]) against targets [B, T] (0 = padding).

  `chunk_tokens` <= 0, or at least B·T, computes the logits at once (the unfused path).
  """
  rows, length = targets.shape
  step = max(1, chunk_tokens // rows)
  if chunk_tokens <= 0 or step >= length:
    return loss_terms(output_logits(hidden, kernel, bias), targets, label_smoothing)
  chunks = -(-length // step)
  pad = chunks * step - length  # padded positions have target 0: weight 0

  def split(x: Array) -> Array:  # [B, T, ...] -> [chunks, B, step, ...]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(rows, chunks, step, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk(sums: dict[str, Array], xs: tuple[Array, Array]) -> tuple[dict[str, Array], None]:
    h, t = xs
    terms = loss_terms(output_logits(h, kernel, bias), t, label_smoothing)
    return jax.tree.map(jnp.add, sums, terms), None

  zeros = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'nll', 'correct', 'tokens')}
  sums, _ = jax.lax.scan(chunk, zeros, (split(hidden), split(targets)))
  return sums
