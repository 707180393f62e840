"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017) in Flax linen.

Shapes: B = batch, S = source length, T = target length, D = d_model, V = vocab.
Token id 0 is padding and also the decoder's start symbol (targets are shifted
right by one inside the decoder). Packed batches pass `*_positions` (position of
each token inside its own sequence) and `*_segmentation` (1, 2, ... per packed
sequence, 0 for padding); attention never crosses segments.

Every parameter carries logical axis names (`vocab`, `embed`, `mlp`, `heads`,
`kv`) so `transformer_jax.sharding` can map them onto a device mesh.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from transformer_jax.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from transformer_jax.linear import Linear, project
from transformer_jax.model_config import ACTIVATIONS, TransformerConfig

Array = jax.Array

def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
  """[max_len, d_model] table: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)."""
  pos = np.arange(max_len, dtype=np.float64)[:, None]
  two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
  angles = pos / np.power(10000.0, two_i / d_model)
  table = np.zeros((max_len, d_model), dtype=np.float32)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles[:, : d_model // 2])
  return table


def shift_right(targets: Array, segmentation: Optional[Array] = None) -> Array:
  """Decoder inputs: [B, T] targets shifted one step right, 0 as start symbol.

  With packing, the first token of every segment also becomes 0.
  """
  shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  if segmentation is not None:
    prev_segment = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(segmentation == prev_segment, shifted, 0)
  return shifted


class Embed(nn.Module):
  """Token embedding [V, D] scaled by sqrt(D) (`scale_embedding`), plus positions and dropout."""
  config: TransformerConfig
  num_embeddings: int

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=cfg.d_model ** -0.5),
                                     ('vocab', 'embed')),
        (self.num_embeddings, cfg.d_model), cfg.param_dtype)
    if cfg.positional == 'learned':
      self.pos_embedding = self.param(
          'pos_embedding',
          nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, 'embed')),
          (cfg.max_len, cfg.d_model), cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, tokens: Array, positions: Optional[Array], deterministic: bool) -> Array:
    """[B, L] ids and [B, L] (or None: 0..L-1) positions -> [B, L, D]."""
    cfg = self.config
    table = jnp.asarray(self.embedding, cfg.dtype)
    x = jnp.take(table, tokens, axis=0)
    if cfg.scale_embedding:
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.dtype)
    if cfg.zero_pad_embedding:
      x = jnp.where((tokens == 0)[..., None], jnp.zeros((), cfg.dtype), x)
    if positions is None:
      if tokens.shape[1] > cfg.max_len:
        raise ValueError(f'sequence length {tokens.shape[1]} exceeds max_len={cfg.max_len} '
                         '(positions beyond the table would be clamped silently)')
      positions = jnp.arange(tokens.shape[1])[None, :]
    if cfg.positional == 'learned':
      pos_table = jnp.asarray(self.pos_embedding, cfg.dtype)
    else:
      pos_table = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model), cfg.dtype)
    x = x + jnp.take(pos_table, positions, axis=0)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return self.dropout(x, deterministic=deterministic)

  def output_kernel(self) -> Array:
    """The table [V, D] in the compute dtype, as the kernel of the output projection.

    Not rescaled: with the N(0, D^-0.5) init a unit-variance `x` gives logits of
    std ~1 (the input side multiplies by sqrt(D) instead, as in the paper, §3.4).
    """
    return jnp.asarray(self.embedding, self.config.dtype)


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2 (or another `activation`): [B, L, D] -> [B, L, D]."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    h = Linear((cfg.d_ff,), ('mlp', 'embed'), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
               name='wi')(x)
    h = nn.with_logical_constraint(ACTIVATIONS[cfg.activation](h), ('batch', 'length', 'mlp'))
    return Linear((cfg.d_model,), ('embed', 'mlp'), dtype=cfg.dtype,
                  param_dtype=cfg.param_dtype, name='wo')(h)


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


def _attention(cfg: TransformerConfig, name: str) -> MultiHeadAttention:
  return MultiHeadAttention(num_heads=cfg.num_heads, qk_dim=cfg.qk_dim, v_dim=cfg.v_dim,
                            out_dim=cfg.d_model, dropout_rate=cfg.attention_dropout_rate,
                            dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                            implementation=cfg.attention_impl, name=name)


class Residual(nn.Module):
  """One sub-layer with dropout, the residual connection and layer norm.

  post-LN (paper): LayerNorm(x + Dropout(f(x)));  pre-LN: x + Dropout(f(LayerNorm(x))).
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, sublayer: Any, deterministic: bool) -> Array:
    cfg = self.config
    norm = _layer_norm(cfg, 'norm')
    y = sublayer(norm(x) if cfg.pre_norm else x)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    out = x + y if cfg.pre_norm else norm(x + y)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


class EncoderLayer(nn.Module):
  """Self-attention + FFN sub-layers: [B, S, D] -> [B, S, D]."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], deterministic: bool) -> Array:
    cfg = self.config
    attn = _attention(cfg, 'self_attention')
    x = Residual(cfg, name='attention_block')(
        x, lambda h: attn(h, h, mask, deterministic=deterministic), deterministic)
    return Residual(cfg, name='ffn_block')(x, FeedForward(cfg, name='ffn'), deterministic)


class DecoderLayer(nn.Module):
  """Masked self-attention, encoder-decoder attention, FFN: [B, T, D] -> [B, T, D]."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_mask: Optional[Array],
               cross_mask: Optional[Array], deterministic: bool,
               cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    cached = cache_index is not None
    self_attn = _attention(cfg, 'self_attention')
    cross_attn = _attention(cfg, 'cross_attention')
    y = Residual(cfg, name='self_attention_block')(
        y, lambda h: self_attn(h, h, self_mask, deterministic=deterministic,
                               cache_index=cache_index,
                               cache_mode='self' if cached else None), deterministic)
    y = Residual(cfg, name='cross_attention_block')(
        y, lambda h: cross_attn(h, encoded, cross_mask, deterministic=deterministic,
                                cache_index=cache_index,
                                cache_mode='cross' if cached else None), deterministic)
    return Residual(cfg, name='ffn_block')(y, FeedForward(cfg, name='ffn'), deterministic)


def _maybe_remat(layer_cls: type, cfg: TransformerConfig) -> type:
  """Wrap a layer class in nn.remat per `cfg.remat` (deterministic is static)."""
  if cfg.remat == 'none':
    return layer_cls
  policy = (jax.checkpoint_policies.checkpoint_dots if cfg.remat == 'dots' else None)
  static = (3,) if layer_cls is EncoderLayer else (5,)
  return nn.remat(layer_cls, policy=policy, static_argnums=static)


class Encoder(nn.Module):
  """Embedding + N encoder layers: [B, S] ids -> [B, S, D]."""
  config: TransformerConfig
  embed: Embed

  @nn.compact
  def __call__(self, inputs: Array, inputs_positions: Optional[Array] = None,
               inputs_segmentation: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    cfg = self.config
    mask = padding_mask(inputs)
    if inputs_segmentation is not None:
      mask = combine_masks(mask, segment_mask(inputs_segmentation, inputs_segmentation))
    x = self.embed(inputs, inputs_positions, deterministic)
    layer_cls = _maybe_remat(EncoderLayer, cfg)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f'layer_{i}')(x, mask, deterministic)
    if cfg.pre_norm:
      x = _layer_norm(cfg, 'final_norm')(x)
    return x


def output_logits(hidden: Array, kernel: Array, bias: Optional[Array] = None) -> Array:
  """The output projection: hidden [..., D] · kernel [V, D]ᵀ (+ bias [V]) -> float32 [..., V]."""
  logits = project(hidden, kernel)
  if bias is not None:
    logits = logits + bias
  logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
  return logits.astype(jnp.float32)


class Decoder(nn.Module):
  """Embedding + N decoder layers + output projection: -> [B, T, V] logits (float32).

  With `return_hidden` the projection is left to the caller (the chunked training loss):
  -> (hidden [B, T, D], kernel [V, D], bias [V] or None), see `output_logits`.
  """
  config: TransformerConfig
  embed: Embed

  @nn.compact
  def __call__(self, encoded: Array, inputs: Array, targets: Array,
               targets_positions: Optional[Array] = None,
               inputs_segmentation: Optional[Array] = None,
               targets_segmentation: Optional[Array] = None,
               deterministic: bool = True, use_cache: bool = False,
               return_hidden: bool = False) -> Any:
    cfg = self.config
    cross_mask = padding_mask(inputs)
    if use_cache:
      # One step: `targets` [B·G, 1] is the previous token of G hypotheses per sentence;
      # position = cache index. `history` [B, G, L]: the beam whose slot holds each
      # hypothesis' keys/values at each position (see `reorder_beams`).
      is_init = not self.has_variable('cache', 'index')
      sentences = encoded.shape[0]
      if targets.shape[0] % sentences:
        raise ValueError(f'{targets.shape[0]} decoder rows do not split into hypotheses of '
                         f'{sentences} sentences (rows b*K + k for K per sentence)')
      groups = targets.shape[0] // sentences
      index_var = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      history = self.variable('cache', 'history', jnp.zeros,
                              (sentences, groups, targets.shape[1]), jnp.int32)
      cache_index = index_var.value
      if not is_init:
        index_var.value = cache_index + 1
        own = jnp.broadcast_to(jnp.arange(groups, dtype=jnp.int32)[:, None],
                               (sentences, groups, 1))
        history.value = lax.dynamic_update_slice(history.value, own, (0, 0, cache_index))
      y = self.embed(targets, jnp.full(targets.shape, cache_index), deterministic)
      self_mask = slot_mask(history.value, cache_index)
    else:
      cache_index = None
      y = self.embed(shift_right(targets, targets_segmentation), targets_positions,
                     deterministic)
      self_mask = combine_masks(padding_mask(targets), causal_mask(targets.shape[1]))
      if targets_segmentation is not None:
        self_mask = combine_masks(self_mask,
                                  segment_mask(targets_segmentation, targets_segmentation))
      if inputs_segmentation is not None:
        cross_mask = combine_masks(cross_mask,
                                   segment_mask(targets_segmentation, inputs_segmentation))
    layer_cls = _maybe_remat(DecoderLayer, cfg)
    for i in range(cfg.num_decoder_layers):
      y = layer_cls(cfg, name=f'layer_{i}')(y, encoded, self_mask, cross_mask,
                                            deterministic, cache_index)
    if cfg.pre_norm:
      y = _layer_norm(cfg, 'final_norm')(y)
    if cfg.logits_via_embedding:
      kernel, bias = self.embed.output_kernel(), None
      if cfg.logits_bias:
        bias = jnp.asarray(self.param(
            'logits_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
            (cfg.output_vocab_size,), cfg.param_dtype), cfg.dtype)
    else:
      kernel, bias = Linear((cfg.output_vocab_size,), ('vocab', 'embed'), dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, name='logits').weights((cfg.d_model,))
    if return_hidden:
      return y, kernel, bias
    return output_logits(y, kernel, bias)


class Transformer(nn.Module):
  """Encoder-decoder Transformer.

  `__call__(inputs [B, S], targets [B, T]) -> logits [B, T, V]` (teacher forcing).
  `encode(...) -> [B, S, D]`; `decode(encoded, inputs, targets, ...) -> [B, T, V]`.
  Cached decoding: `decode(..., use_cache=True)` with targets [B, 1] and a mutable
  ``cache`` collection from `init_cache` (for beams: targets [B·K, 1], encoder states
  and source ids of the B sentences, `init_cache(..., beam_size=K)`).
  """
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.source_embed = Embed(cfg, cfg.vocab_size, name='source_embed')
    if cfg.share_embeddings:
      self.target_embed = self.source_embed
    else:
      self.target_embed = Embed(cfg, cfg.output_vocab_size, name='target_embed')
    self.encoder = Encoder(cfg, self.source_embed)
    self.decoder = Decoder(cfg, self.target_embed)

  def encode(self, inputs: Array, inputs_positions: Optional[Array] = None,
             inputs_segmentation: Optional[Array] = None,
             deterministic: bool = True) -> Array:
    """[B, S] source ids -> [B, S, D] encoder states."""
    return self.encoder(inputs, inputs_positions, inputs_segmentation, deterministic)

  def decode(self, encoded: Array, inputs: Array, targets: Array,
             targets_positions: Optional[Array] = None,
             inputs_segmentation: Optional[Array] = None,
             targets_segmentation: Optional[Array] = None,
             deterministic: bool = True, use_cache: bool = False,
             return_hidden: bool = False) -> Any:
    """Encoder states [B, S, D], source ids [B, S] (for the mask), targets [B, T] -> logits
    (or the `Decoder`'s `return_hidden` triple)."""
    return self.decoder(encoded, inputs, targets, targets_positions, inputs_segmentation,
                        targets_segmentation, deterministic, use_cache, return_hidden)

  def __call__(self, inputs: Array, targets: Array,
               inputs_positions: Optional[Array] = None,
               targets_positions: Optional[Array] = None,
               inputs_segmentation: Optional[Array] = None,
               targets_segmentation: Optional[Array] = None,
               deterministic: bool = True, return_hidden: bool = False) -> Any:
    """Teacher-forced forward pass: [B, S] and [B, T] ids -> [B, T, V] float32 logits
    (`return_hidden`: (hidden [B, T, D], output kernel [V, D], bias [V] or None))."""
    encoded = self.encode(inputs, inputs_positions, inputs_segmentation, deterministic)
    return self.decode(encoded, inputs, targets, targets_positions, inputs_segmentation,
                       targets_segmentation, deterministic, return_hidden=return_hidden)


def init_cache(config: TransformerConfig, batch_size: int, max_decode_len: int,
               source_len: int, beam_size: int = 1) -> Any:
  """Zero decoding cache for `batch_size` sentences of `beam_size` hypotheses each, up to
  `max_decode_len` target steps.

  Decoder rows are sentence-major (row b·beam_size + j is hypothesis j of sentence b):
  self-attention caches hold one slot per step and beam, keys [B, N, d_k, L·beam] and
  values [B, N, L·beam, d_v] (L = max_decode_len), with the slot history
  `decoder/history` [B, beam, L] (see `reorder_beams`). Cross-attention keeps no cache
  (see `MultiHeadAttention`). Decode with targets [B·beam, 1] and encoder states / source
  ids of [B] rows. Every leaf but the scalar `index` has the sentences first.
  """
  if max(max_decode_len, source_len) > config.max_len:
    raise ValueError(f'max_decode_len={max_decode_len} / source_len={source_len} exceed '
                     f'max_len={config.max_len}')
  model = Transformer(config)
  encoded = jnp.zeros((batch_size, source_len, config.d_model), config.dtype)
  inputs = jnp.ones((batch_size, source_len), jnp.int32)
  targets = jnp.ones((batch_size * beam_size, max_decode_len), jnp.int32)

  def make(rng):
    return model.init(rng, encoded, inputs, targets, use_cache=True, method=Transformer.decode)

  shapes = jax.eval_shape(make, jax.random.key(0))['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def slot_mask(history: Array, index: Array) -> Array:
  """Self-attention mask over a slot cache: history [B, G, L] (for each hypothesis and
  position, the beam whose slot holds it) and the current step -> [B, 1, G, L·G] bool,
  True where hypothesis g may read slot l·G + j (step l, beam j): l <= index, j = history."""
  sentences, groups, length = history.shape
  mask = ((history[..., None] == jnp.arange(groups))
          & (jnp.arange(length) <= index)[:, None])
  return mask.reshape(sentences, 1, groups, length * groups)


def reorder_beams(cache: Any, beams: Array) -> Any:
  """Continue hypothesis k of sentence b from hypothesis `beams[b, k]` ([B, K] ints in
  [0, K)). Only the [B, K, L] slot history moves: keys and values stay in the slots
  they were written to, so a step reads the cache once instead of copying it."""
  decoder = dict(cache['decoder'])
  decoder['history'] = jnp.take_along_axis(decoder['history'], beams[:, :, None], axis=1)
  return {**cache, 'decoder': decoder}


def count_params(params: Any) -> int:
  """Number of scalar parameters in a (possibly boxed) params pytree."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(params)))
