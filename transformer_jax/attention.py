"""Multi-head attention (Vaswani et al. 2017, §3.2) with masks and a decoding cache.

Shapes use B = batch, Q = query length, K = key length, D = model width,
N = heads, H = per-head width (d_k for queries/keys, d_v for values).

The score computation goes through `jax.nn.dot_product_attention`, so on GPU
XLA can dispatch to cuDNN's fused attention. When attention dropout is active,
when d_v != d_k, or when the caller asks for the weights (by making the
``intermediates`` collection mutable), an explicit softmax path is used instead and the weights
are sown as ``intermediates/attention_weights`` with shape [B, N, Q, K].
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from transformer_jax import backend
from transformer_jax.linear import Linear, project

Array = jax.Array
Dtype = Any


def padding_mask(key_tokens: Array, pad_id: int = 0) -> Array:
  """[B, K] tokens -> [B, 1, 1, K] bool mask that is False at padded keys."""
  return (key_tokens != pad_id)[:, None, None, :]


def causal_mask(length: int) -> Array:
  """-> [1, 1, L, L] bool mask letting query i attend to keys j <= i."""
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """[B, Q], [B, K] packed-sequence ids -> [B, 1, Q, K] bool same-segment mask."""
  return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


def combine_masks(*masks: Optional[Array]) -> Optional[Array]:
  """Logical AND of broadcastable bool masks, skipping None (None if all are)."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  out = present[0]
  for m in present[1:]:
    out = jnp.logical_and(out, m)
  return out


def _explicit_attention(query: Array, key: Array, value: Array,
                        mask: Optional[Array], dropout_rate: float,
                        deterministic: bool, module: nn.Module,
                        key_layout: str = 'bknh',
                        value_layout: str = 'bknh') -> tuple[Array, Array]:
  """Softmax(QK^T/sqrt(H)) V with optional dropout on the weights.

  query [B, Q, N, Hk]; key and value in the einsum layouts given (default
  [B, K, N, H]; the decoding cache uses keys 'bnhk' and values 'bnkh') ->
  ([B, Q, N, Hv], weights [B, N, Q, K] in float32).
  """
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum(f'bqnh,{key_layout}->bnqk', query, key).astype(jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - dropout_rate,
                                weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  weights_v = weights.astype(value.dtype)
  if backend.policy().heads_major_values:  # [B, N, Q, H], then a small transpose
    return jnp.einsum(f'bnqk,{value_layout}->bnqh', weights_v, value).transpose(0, 2, 1, 3), weights
  return jnp.einsum(f'bnqk,{value_layout}->bqnh', weights_v, value), weights


def _cache_layout(key: Array, value: Array) -> tuple[Array, Array]:
  """[B, L, N, H] keys/values -> keys [B, N, H, L] and values [B, N, L, H].

  The layouts the attention dots read directly, so a decoding step does not
  re-lay-out the whole cache.
  """
  return key.transpose(0, 2, 3, 1), value.transpose(0, 2, 1, 3)


def _attend_cache(query: Array, key: Array, value: Array, mask: Optional[Array],
                  module: nn.Module) -> tuple[Array, Array]:
  """Attention of query [G·B, Q, N, Hk] over a cache of keys [B, N, Hk, K] and values
  [B, N, K, Hv], where each run of G consecutive query rows (the beams of one sentence)
  shares one cache row: both the cross-attention cache and the self-attention slot
  cache are stored once per sentence.

  `mask` broadcasts to [B, N, G·Q, K]. -> ([G·B, Q, N, Hv], weights [G·B, N, Q, K]).
  """
  rows, (batch, length, heads) = key.shape[0], query.shape[:3]
  if batch % rows:
    raise ValueError(f'{batch} query rows do not split into groups over {rows} cache rows')
  groups = batch // rows
  grouped = query.reshape(rows, groups * length, *query.shape[2:])
  out, weights = _explicit_attention(grouped, key, value, mask, 0.0, True, module,
                                     key_layout='bnhk', value_layout='bnkh')
  weights = weights.reshape(rows, heads, groups, length, -1).swapaxes(1, 2)
  return (out.reshape(batch, length, *out.shape[2:]),
          weights.reshape(batch, heads, length, -1))


class MultiHeadAttention(nn.Module):
  """Multi-head scaled dot-product attention.

  Attributes:
    num_heads: N.
    qk_dim: per-head query/key width d_k.
    v_dim: per-head value width d_v.
    out_dim: output width (d_model).
    dropout_rate: dropout on the attention weights (0 in the paper).
    dtype / param_dtype: compute and parameter dtypes.
    implementation: passed to `jax.nn.dot_product_attention` (None, 'xla', 'cudnn').
  """
  num_heads: int
  qk_dim: int
  v_dim: int
  out_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: Optional[str] = None

  def _projections(self, inputs_q: Array, inputs_kv: Array, fused: bool
                   ) -> tuple[Array, Array, Array]:
    """Queries [B, Q, N, d_k], keys [B, K, N, d_k], values [B, K, N, d_v]; kernels
    [N, head_dim, D]. `fused` (self-attention decoding: one input) computes all three
    with one product over the kernels side by side (one weight stream, not three)."""
    layers = [Linear((self.num_heads, dim), ('heads', 'kv', 'embed'), dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)
              for name, dim in (('query', self.qk_dim), ('key', self.qk_dim),
                                ('value', self.v_dim))]
    if not fused:
      return tuple(layer(x) for layer, x in zip(layers, (inputs_q, inputs_kv, inputs_kv)))
    weights = [layer.weights(inputs_q.shape[-1:]) for layer in layers]
    kernel = jnp.concatenate([k.reshape(-1, k.shape[-1]) for k, _ in weights])
    bias = jnp.concatenate([b.reshape(-1) for _, b in weights])
    y = project(jnp.asarray(inputs_q, self.dtype), kernel) + bias
    sizes = [self.num_heads * dim for dim in (self.qk_dim, self.qk_dim, self.v_dim)]
    parts = jnp.split(y, [sizes[0], sizes[0] + sizes[1]], axis=-1)
    return tuple(p.reshape(*p.shape[:-1], self.num_heads, -1) for p in parts)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               *, deterministic: bool = True, cache_index: Optional[Array] = None,
               cache_mode: Optional[str] = None) -> Array:
    """Attend from `inputs_q` [B, Q, D] to `inputs_kv` [B, K, D] -> [B, Q, out_dim].

    `mask` is a bool array broadcastable to [B, N, Q, K]; True means "may attend".

    Cached decoding (`cache_mode`):
      'self': autoregressive self-attention over a slot cache shared by the G
        hypotheses (beams) of each of B sentences: keys [B, N, H, max_len·G], values
        [B, N, max_len·G, H]. Each call writes Q = 1 step of every hypothesis into
        slot (`cache_index`, its beam g); slots are written once and never moved, so
        beams are reordered by changing `mask` [B, 1, G, max_len·G], which says which
        slots each hypothesis reads (see `model.slot_mask`); sown attention weights
        are then over the slots, [B·G, N, 1, max_len·G].
      'cross': encoder-decoder attention; nothing is cached. The encoder keys/values
        are projected at every call: inside a jit-compiled decoding loop they do not
        change from step to step, and XLA's loop-invariant code motion computes them
        once before the loop (cheaper than a per-step conditional that reads them back
        from a cache). `inputs_kv` may have fewer rows than `inputs_q` (one per
        sentence, its hypotheses grouped after it).
    At initialisation (no cache yet) the cache is created with the call's shapes.
    """
    query, key, value = self._projections(inputs_q, inputs_kv, fused=cache_mode == 'self')
    want_weights = self.is_mutable_collection('intermediates')
    if cache_mode is not None:
      if cache_mode == 'cross':  # loop-invariant: XLA hoists it out of a decoding loop
        # The barrier makes the re-layout go with it: XLA's loop-invariant code motion
        # does not hoist a lone transpose, which then ran at every step.
        key, value = jax.lax.optimization_barrier(_cache_layout(key, value))
      else:
        key, value, mask = self._self_cache(key, value, mask, cache_index)
      out, weights = _attend_cache(query, key, value, mask, self)
    else:
      key = nn.with_logical_constraint(key, ('batch', 'length', 'heads', 'kv'))
      value = nn.with_logical_constraint(value, ('batch', 'length', 'heads', 'kv'))
      # jax.nn.dot_product_attention needs d_v == d_k (Table 3 row B varies d_k alone).
      fused = self.qk_dim == self.v_dim and not want_weights
      if not fused or (not deterministic and self.dropout_rate > 0.0):
        out, weights = _explicit_attention(query, key, value, mask, self.dropout_rate,
                                           deterministic, self)
      else:
        if mask is not None and self.implementation == 'cudnn':  # cuDNN wants [B, 1|N, Q, K]
          mask = jnp.broadcast_to(mask, (query.shape[0], mask.shape[1], query.shape[1],
                                         key.shape[1]))
        out, weights = jax.nn.dot_product_attention(
            query, key, value, mask=mask, implementation=self.implementation), None
    if want_weights and weights is not None:
      self.sow('intermediates', 'attention_weights', weights)
    return Linear((self.out_dim,), ('embed', 'heads', 'kv'), num_in=2, dtype=self.dtype,
                  param_dtype=self.param_dtype, name='out')(out)

  def _self_cache(self, key: Array, value: Array, mask: Array, cache_index: Optional[Array]
                  ) -> tuple[Array, Array, Optional[Array]]:
    """Write one step of key/value [B·G, 1, N, H] into the slot cache; return all slots,
    keys [B, N, H, L·G] and values [B, N, L·G, H], with the mask [B, 1, G, L·G].

    Slot (step l, beam g) is at index l·G + g: a step's G slots are contiguous, so the
    write is one in-place slice update and the cache is never reshaped or copied."""
    initializing = not self.has_variable('cache', 'cached_key')
    sentences, (rows, steps, heads) = mask.shape[0], key.shape[:3]
    # [B·G, T, N, H] -> keys [B, N, H, T·G], values [B, N, T·G, H].
    key = key.reshape(sentences, rows // sentences * steps, heads, -1).transpose(0, 2, 3, 1)
    value = value.reshape(sentences, rows // sentences * steps, heads, -1).transpose(0, 2, 1, 3)
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    if initializing:
      return key, value, None
    if steps != 1:
      raise ValueError(f'cached self-attention decodes one step at a time, got {steps}')
    slot = cache_index * (rows // sentences)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, 0, slot))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, slot, 0))
    return cached_key.value, cached_value.value, mask
