"""transformer_jax: the Transformer of "Attention Is All You Need" in JAX/Flax.

Importing this package loads only the model and decoding (JAX + Flax). The training system's
modules (`input_pipeline`, `tokenizer`, `train_lib`, `checkpoint`, ...) are imported
explicitly, e.g. ``from transformer_jax import input_pipeline``, so library users
never pay for TensorFlow.
"""

from transformer_jax.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from transformer_jax.decode import beam_search, greedy_decode, sample
from transformer_jax.linear import Linear
from transformer_jax.model import (Decoder, DecoderLayer, Embed, Encoder, EncoderLayer,
                                   FeedForward, Transformer, TransformerConfig, count_params,
                                   init_cache, reorder_beams, shift_right,
                                   sinusoidal_positions, slot_mask)

__version__ = '0.2.0'

__all__ = [
    'Decoder', 'DecoderLayer', 'Embed', 'Encoder', 'EncoderLayer', 'FeedForward', 'Linear',
    'MultiHeadAttention', 'Transformer', 'TransformerConfig', 'beam_search', 'causal_mask',
    'combine_masks', 'count_params', 'greedy_decode', 'init_cache', 'padding_mask',
    'reorder_beams', 'sample', 'segment_mask', 'shift_right', 'sinusoidal_positions',
    'slot_mask',
]
