"""Force-decoding of given translations: their scores and word alignments, from one
teacher-forced forward pass (no search).

Shapes: B = batch, S = source length, T = target length, V = vocabulary. Targets hold each
sentence's tokens, its EOS and padding (0) after it, as decoding outputs them.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import regex

from transformer_jax.decoding import Model, ModelOrEnsemble
from transformer_jax.model import Transformer
from transformer_jax.model_config import PAD_ID
from transformer_jax.tokenizer import INVISIBLE

Array = jax.Array

_INVISIBLE = regex.compile(f'[{INVISIBLE}]')


@jax.jit
def _token_log_probs(decoder: ModelOrEnsemble, inputs: Array, targets: Array) -> Array:
  """[B, T] log-probability of each target token (0 at padding); an ensemble's mean."""
  return jnp.where(targets != PAD_ID, decoder.token_log_probs(inputs, targets), 0.0)


def score(decoder: ModelOrEnsemble, inputs: Array, targets: Array, *,
          normalise: bool = False) -> tuple[Array, Array]:
  """The log-probabilities of given translations under a `decoding.Model` or `Ensemble`:
  [B, S] source ids and [B, T] target ids (EOS included, 0-padded) -> (per sentence [B]:
  the sum over its tokens, or with `normalise` their mean; per token [B, T], 0 at
  padding), in nats.

  They are those that decoding computes (padding is never a candidate; an ensemble
  averages its members' log-probabilities): an output of `decoding.beam_search` scores
  its log-probability.
  """
  targets = jnp.asarray(targets, jnp.int32)
  per_token = _token_log_probs(decoder, jnp.asarray(inputs, jnp.int32), targets)
  total = jnp.sum(per_token, axis=-1)
  if normalise:
    total = total / jnp.maximum(jnp.sum(targets != PAD_ID, axis=-1), 1)
  return total, per_token


@functools.partial(jax.jit, static_argnames=('layer',))
def cross_attention(model: Model, inputs: Array, targets: Array,
                    layer: Optional[int] = None) -> Array:
  """Encoder-decoder attention of decoder layer `layer` (default: the penultimate one, or
  the only one) of a `decoding.Model`, averaged over its heads: [B, S] source and [B, T]
  target ids -> [B, T, S] weights of target position t (the decoder state that predicts
  token t) over the source; each row sums to 1 over the source's non-pad tokens.

  The penultimate layer's attention is the best word aligner of a Transformer's layers
  (Garg et al. 2019, "Jointly Learning to Align and Translate with Transformer Models").
  """
  layers = model.config.num_decoder_layers
  layer = max(layers - 2, 0) if layer is None else layer
  if not 0 <= layer < layers:
    raise ValueError(f'layer must be in [0, {layers}), got {layer}')
  _, state = Transformer(model.config).apply({'params': model.params}, inputs, targets,
                                             mutable=['intermediates'])
  weights = state['intermediates']['decoder'][f'layer_{layer}']['cross_attention']
  return jnp.mean(weights['attention_weights'][0], axis=1)


def span_words(text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
  """Each token's whitespace word in `text` (its index in `text.split()`) from the
  [begin, end) characters of `text` it covers (`tokenizer` `spans` / `decode_spans`): the
  word of its first visible character; -1 for a token with none (a lone '▁', or only
  characters SentencePiece drops into a neighbour's span: U+200B, U+200E, a BOM, ...)."""
  word, words = -1, []
  for i, char in enumerate(text):
    word += not char.isspace() and (i == 0 or text[i - 1].isspace())
    words.append(-1 if char.isspace() or _INVISIBLE.match(char) else word)
  return [next((words[i] for i in range(begin, min(end, len(text))) if words[i] >= 0), -1)
          for begin, end in spans]


def align(weights: Any, source_words: Sequence[int],
          target_words: Sequence[int]) -> list[tuple[int, int]]:
  """Word alignment of one sentence pair from attention weights [T, S] (e.g. a sentence's
  `cross_attention`, cut to its tokens) and each token's word index (-1: none, e.g. EOS and
  padding; see `span_words`): every target token with a word is aligned to the source
  token of largest weight among those with a word, giving the pair (source word, target
  word). -> the distinct pairs, sorted."""
  weights = np.asarray(weights, np.float64)
  source_words, target_words = np.asarray(source_words), np.asarray(target_words)
  if weights.shape != (len(target_words), len(source_words)):
    raise ValueError(f'weights of shape {weights.shape} do not match {len(target_words)} '
                     f'target and {len(source_words)} source tokens')
  if not np.any(source_words >= 0):
    return []
  best = np.argmax(np.where(source_words >= 0, weights, -np.inf), axis=1)
  return sorted({(int(source_words[s]), int(w)) for s, w in zip(best, target_words) if w >= 0})


def pharaoh(pairs: Sequence[tuple[int, int]]) -> str:
  """Alignment pairs (source word i, target word j) -> Pharaoh format 'i-j i-j ...'."""
  return ' '.join(f'{i}-{j}' for i, j in pairs)
