"""The training loss fused with the output projection, over chunks of target positions.

`chunked_loss_terms` computes what `metrics.loss_terms(output_logits(hidden, kernel,
bias), targets, ε)` computes — summed label-smoothed loss, nll, argmax hits and real
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

from transformer_jax.training.metrics import loss_terms
from transformer_jax.model import output_logits

Array = jax.Array

# Tokens (global batch) per chunk: [8192, 37000] float32 logits are 1.2 GB.
CHUNK_TOKENS = 8192


def chunked_loss_terms(hidden: Array, kernel: Array, bias: Optional[Array], targets: Array,
                       label_smoothing: float,
                       chunk_tokens: int = CHUNK_TOKENS) -> dict[str, Array]:
  """Summed loss terms (see `metrics.loss_terms`) of hidden [B, T, D] projected by
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
