"""What is tuned for one backend, in one place: the layers and searches ask `policy()`.

Each choice here earned its place in a same-run measurement (BENCHMARKS.md, "Backend
policy"); on a backend without an entry every choice is off and the code is the plain
math. XLA:CPU runs a decoding step's small products and its full-vocabulary top-k far
below what the hardware allows, so on CPU:

  * `weights_major_max_rows`: a projection of at most this many rows (decoding: batch x
    beam) is computed as W [N, K] @ xᵀ [K, M], reading the weights in their stored order
    (`linear.project`); 0: never.
  * `chunked_top_k`: decoding's top-k over the vocabulary is found among the k chunks of
    `TOP_K_CHUNK` entries with the largest maxima (`top_k`), not by a sort of the whole.
  * `heads_major_values`: attention's weighted sum of values is written heads-major
    [B, N, Q, H] and then transposed to [B, Q, N, H]; asked for [B, Q, N, H] directly,
    XLA:CPU picks a layout that makes beam search's grouped queries much slower.

Beam search at the paper's base dimensions on the 2-core dev VM (AMD EPYC), each choice
off against all on, same run: weights-major 1.35x, chunked top-k 1.03x (median; 1.14x by
best run), heads-major values 1.34x; greedy decoding 1.58x, -, 0.94x; a training step
(more than 256 rows a product) unchanged within noise (`benchmarks/bench_backend.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

TOP_K_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class Policy:
  weights_major_max_rows: int = 0
  chunked_top_k: bool = False
  heads_major_values: bool = False


POLICIES = {'cpu': Policy(weights_major_max_rows=256, chunked_top_k=True,
                          heads_major_values=True)}


def policy() -> Policy:
  """The policy of JAX's default backend (at trace time)."""
  return POLICIES.get(jax.default_backend(), Policy())


def top_k(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest entries of each row of [R, V] and their ids -> [R, k] each, in
  `lax.top_k`'s order (equal values: lower id first)."""
  vocab = values.shape[-1]
  if not policy().chunked_top_k or vocab % TOP_K_CHUNK or vocab // TOP_K_CHUNK <= k:
    return lax.top_k(values, k)
  # One pass finds the chunk maxima; the k best are in the k chunks with the largest.
  # Ascending chunk ids keep the candidates in vocabulary order, so ties break as top_k.
  chunks = values.reshape(values.shape[0], vocab // TOP_K_CHUNK, TOP_K_CHUNK)
  best = jnp.sort(lax.top_k(jnp.max(chunks, axis=-1), k)[1], axis=-1)  # [R, k]
  candidates = jnp.take_along_axis(chunks, best[:, :, None], axis=1).reshape(len(values), -1)
  top, position = lax.top_k(candidates, k)
  return top, (jnp.take_along_axis(best, position // TOP_K_CHUNK, axis=1) * TOP_K_CHUNK
               + position % TOP_K_CHUNK)
