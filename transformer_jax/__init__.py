"""transformer_jax: the Transformer of "Attention Is All You Need" in JAX/Flax.

Importing this package loads only the model and decoding (JAX + Flax). Other modules are
imported explicitly: the library's (`inference`, `scoring`, `checkpoint`, `parsing`, ...,
all in the plain install) and the training system's (`transformer_jax.training`, which
needs the [train] extra), so library users never pay for TensorFlow.
"""

from transformer_jax.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       padding_mask, segment_mask)
from transformer_jax.decoding import Ensemble, Model, Result, Search, beam_search, greedy, sample
from transformer_jax.linear import Linear
from transformer_jax.model import (Decoder, DecoderLayer, Embed, Encoder, EncoderLayer,
                                   FeedForward, Transformer, TransformerConfig, count_params,
                                   init_cache, reorder_beams, shift_right,
                                   sinusoidal_positions, slot_mask)

__version__ = '0.2.0'

__all__ = [
    'Decoder', 'DecoderLayer', 'Embed', 'Encoder', 'EncoderLayer', 'Ensemble', 'FeedForward',
    'Linear', 'Model', 'MultiHeadAttention', 'Result', 'Search', 'Transformer',
    'TransformerConfig', 'beam_search', 'causal_mask', 'combine_masks', 'count_params',
    'greedy', 'init_cache', 'padding_mask', 'reorder_beams', 'sample', 'segment_mask',
    'shift_right', 'sinusoidal_positions', 'slot_mask',
]
