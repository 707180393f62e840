"""The model's hyper-parameters: `TransformerConfig` (defaults: the paper's base model).

A frozen dataclass, hashable, so jitted functions take it as a static argument; its
checks run at construction. `transformer_jax.model` builds the Flax modules from it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Token ids every model here shares: 0 is padding and the decoder's start symbol (never an
# output), 1 ends a sentence. Vocabularies are built (or imported models permuted) to fit.
PAD_ID = 0
EOS_ID = 1
# Feed-forward activations by name (the names Transformers' configs use).
ACTIVATIONS = {'relu': nn.relu, 'gelu': functools.partial(nn.gelu, approximate=False),
               'swish': nn.swish, 'silu': nn.silu}


# What each field is to a saved model, declared once; every other field fixes what the
# weights mean, so a checkpoint fits only a model with the same value.
#   RUNTIME: how the model runs, not what it computes (the attention kernel, what the
#     backward pass recomputes): may differ on resume, fine-tuning and inference.
#   TRAINING: how it is trained (regularisation, compute precision): a fine-tuning run may
#     choose its own; a resumed run may not (it continues one run, bit for bit).
RUNTIME_FIELDS = frozenset({'attention_impl', 'remat'})
TRAINING_FIELDS = frozenset({'dropout_rate', 'attention_dropout_rate', 'dtype'})
# Fields added after checkpoints were first written: saved only where they differ from
# their defaults, so that older saved configs still compare equal.
LATER_FIELDS = ('activation', 'scale_embedding', 'logits_bias', 'zero_pad_embedding')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of the model (defaults: the paper's base model).

  `d_k`/`d_v` default to d_model / num_heads (Table 3 row A/B vary them).
  `dropout_rate` is the residual + embedding dropout P_drop; `attention_dropout_rate`
  drops attention weights (0 in the paper). `pre_norm=False` is the paper's post-LN
  block LayerNorm(x + Sublayer(x)); True gives x + Sublayer(LayerNorm(x)) with a
  final LayerNorm. `remat` is 'none', 'full' or 'dots' (activation checkpointing per layer).

  Options for other trainers' models (Marian / OPUS-MT, see `transformer_jax.interop.marian`), the
  paper's choice by default: `activation` of the FFN ('relu'; 'gelu' is the exact erf
  form, 'swish' = 'silu' = x·sigmoid(x)); `scale_embedding` multiplies token embeddings by
  sqrt(d_model); `logits_bias` adds a trained [V] bias to the shared-embedding logits;
  `zero_pad_embedding` embeds id 0 (padding and the decoder's start symbol) as a zero
  vector, so the decoder starts from zeros like Marian (the row then only feeds the logits).
  """
  vocab_size: int
  target_vocab_size: Optional[int] = None  # None: shared with vocab_size.
  d_model: int = 512
  d_ff: int = 2048
  num_heads: int = 8
  d_k: Optional[int] = None
  d_v: Optional[int] = None
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  max_len: int = 512
  positional: str = 'sinusoidal'  # or 'learned'
  share_embeddings: bool = True
  logits_via_embedding: bool = True
  pre_norm: bool = False
  layer_norm_epsilon: float = 1e-6
  activation: str = 'relu'  # or 'gelu', 'swish' / 'silu'
  scale_embedding: bool = True
  logits_bias: bool = False
  zero_pad_embedding: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: Optional[str] = None  # jax.nn.dot_product_attention implementation.
  remat: str = 'none'

  def __post_init__(self):
    sizes = ('vocab_size', 'd_model', 'd_ff', 'num_heads', 'num_encoder_layers',
             'num_decoder_layers', 'max_len')
    for name in sizes + ('target_vocab_size', 'd_k', 'd_v'):  # the last three may be None
      value = getattr(self, name)
      if (name in sizes or value is not None) and not (
          isinstance(value, (int, np.integer)) and value > 0):
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    for name in ('dropout_rate', 'attention_dropout_rate'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {getattr(self, name)!r}')
    if self.positional not in ('sinusoidal', 'learned'):
      raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}')
    if self.logits_bias and not self.logits_via_embedding:
      raise ValueError('logits_bias needs logits_via_embedding (a separate logits layer has '
                       'its own bias)')
    if self.remat not in ('none', 'full', 'dots'):
      raise ValueError(f"remat must be 'none', 'full' or 'dots', got {self.remat!r}")
    if self.d_k is None and self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}; '
                       'set d_k and d_v explicitly')
    if self.share_embeddings and self.target_vocab_size not in (None, self.vocab_size):
      raise ValueError('share_embeddings needs target_vocab_size == vocab_size')

  @property
  def qk_dim(self) -> int:
    return self.d_k or self.d_model // self.num_heads

  @property
  def v_dim(self) -> int:
    return self.d_v or self.d_model // self.num_heads

  @property
  def output_vocab_size(self) -> int:
    return self.target_vocab_size or self.vocab_size

  def replace(self, **changes: Any) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)

  @classmethod
  def base(cls, vocab_size: int, **overrides: Any) -> 'TransformerConfig':
    """The paper's base model: N=6, d_model 512, d_ff 2048, h 8, P_drop 0.1."""
    return cls(vocab_size=vocab_size, **overrides)

  @classmethod
  def big(cls, vocab_size: int, **overrides: Any) -> 'TransformerConfig':
    """The paper's big model: d_model 1024, d_ff 4096, h 16, P_drop 0.3 (EN-DE)."""
    values = dict(d_model=1024, d_ff=4096, num_heads=16, dropout_rate=0.3)
    values.update(overrides)
    return cls(vocab_size=vocab_size, **values)
