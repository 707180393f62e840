"""The model against an independent NumPy transcription of the paper's equations.

Every weight is randomised (biases and layer-norm parameters too, which start at 0 / 1),
so a misplaced bias, norm, scale or mask shows up in the logits.
"""

import jax
import numpy as np
import pytest
from flax import linen as nn

from transformer_jax import Transformer, TransformerConfig

CONFIG = TransformerConfig(vocab_size=40, d_model=32, d_ff=64, num_heads=4,
                           num_encoder_layers=2, num_decoder_layers=2, max_len=64,
                           dropout_rate=0.0)
SOURCE = np.array([[5, 9, 33, 2, 17, 8], [12, 4, 39, 0, 0, 0]], np.int32)
TARGET = np.array([[7, 21, 3, 30, 11], [25, 6, 0, 0, 0]], np.int32)
NEG = -1e30


def positional_encoding(length, d):
  """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
  pe = np.zeros((length, d))
  for pos in range(length):
    for i in range(0, d, 2):
      pe[pos, i] = np.sin(pos / 10000 ** (i / d))
      pe[pos, i + 1] = np.cos(pos / 10000 ** (i / d))
  return pe


def layer_norm(x, p, eps):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def multi_head(p, xq, xkv, allowed):
  """§3.2.2 for one sentence: xq [Q, D], xkv [K, D], allowed [Q, K] -> [Q, D]."""
  heads = []
  for n in range(p['query']['kernel'].shape[0]):  # kernels are [N, H, D]
    q = xq @ p['query']['kernel'][n].T + p['query']['bias'][n]
    k = xkv @ p['key']['kernel'][n].T + p['key']['bias'][n]
    v = xkv @ p['value']['kernel'][n].T + p['value']['bias'][n]
    scores = np.where(allowed, q @ k.T / np.sqrt(k.shape[-1]), NEG)
    heads.append(softmax(scores) @ v)
  w_o = p['out']['kernel'].reshape(p['out']['kernel'].shape[0], -1).T  # [D, N, d_v] -> [N·d_v, D]
  return np.concatenate(heads, axis=-1) @ w_o + p['out']['bias']


def feed_forward(p, x):
  """§3.3: max(0, x W1 + b1) W2 + b2."""
  hidden = np.maximum(0, x @ p['wi']['kernel'].T + p['wi']['bias'])  # kernels [out, in]
  return hidden @ p['wo']['kernel'].T + p['wo']['bias']


def sublayer(x, p_norm, f, cfg):
  """§5.4 post-LN: LayerNorm(x + f(x)); pre-LN: x + f(LayerNorm(x))."""
  eps = cfg.layer_norm_epsilon
  if cfg.pre_norm:
    return x + f(layer_norm(x, p_norm, eps))
  return layer_norm(x + f(x), p_norm, eps)


def reference_logits(params, cfg, source, target):
  """Teacher-forced logits [T, V] of one sentence pair (unpadded id lists)."""
  emb = params['source_embed']['embedding']
  d = cfg.d_model
  pe = positional_encoding(cfg.max_len, d)
  x = emb[source] * np.sqrt(d) + pe[:len(source)]
  everywhere = np.ones((len(source), len(source)), bool)
  for i in range(cfg.num_encoder_layers):
    p = params['encoder'][f'layer_{i}']
    x = sublayer(x, p['attention_block']['norm'],
                 lambda h, p=p: multi_head(p['self_attention'], h, h, everywhere), cfg)
    x = sublayer(x, p['ffn_block']['norm'], lambda h, p=p: feed_forward(p['ffn'], h), cfg)
  if cfg.pre_norm:
    x = layer_norm(x, params['encoder']['final_norm'], cfg.layer_norm_epsilon)
  shifted = [0] + list(target[:-1])  # id 0 is the start symbol
  y = emb[shifted] * np.sqrt(d) + pe[:len(shifted)]
  causal = np.tril(np.ones((len(shifted), len(shifted)), bool))
  to_source = np.ones((len(shifted), len(source)), bool)
  for i in range(cfg.num_decoder_layers):
    p = params['decoder'][f'layer_{i}']
    y = sublayer(y, p['self_attention_block']['norm'],
                 lambda h, p=p: multi_head(p['self_attention'], h, h, causal), cfg)
    y = sublayer(y, p['cross_attention_block']['norm'],
                 lambda h, p=p: multi_head(p['cross_attention'], h, x, to_source), cfg)
    y = sublayer(y, p['ffn_block']['norm'], lambda h, p=p: feed_forward(p['ffn'], h), cfg)
  if cfg.pre_norm:
    y = layer_norm(y, params['decoder']['final_norm'], cfg.layer_norm_epsilon)
  return y @ emb.T  # §3.4: the softmax weights are the shared embedding


@pytest.mark.parametrize('pre_norm', [False, True])
def test_logits_match_a_numpy_transcription_of_the_paper(pre_norm):
  cfg = CONFIG.replace(pre_norm=pre_norm)
  model = Transformer(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), SOURCE, TARGET)['params'])
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape, np.float32), params)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, SOURCE, TARGET))
  numpy_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  for row in range(len(SOURCE)):
    source, target = SOURCE[row][SOURCE[row] > 0], TARGET[row][TARGET[row] > 0]
    expected = reference_logits(numpy_params, cfg, source, target)
    # Padding never reaches real positions; padded target positions are not compared.
    np.testing.assert_allclose(logits[row, :len(target)], expected, rtol=2e-4, atol=2e-4)
