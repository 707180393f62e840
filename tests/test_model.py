"""Behaviour of the Transformer model: counts, masks, packing, cache, positions."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from transformer_jax import backend, linear
from transformer_jax import (Transformer, TransformerConfig, count_params, init_cache,
                             reorder_beams, shift_right, sinusoidal_positions)

S, T = 10, 9  # source / target lengths used by most tests (few shapes: few compiles)


def _tokens(seed, shape, vocab=40):
  return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


@pytest.fixture(scope='module')
def forward(tiny_config):
  model = Transformer(tiny_config)
  return jax.jit(lambda p, src, tgt, **kw: model.apply({'params': p}, src, tgt, **kw))


def _param_count(config):
  model = Transformer(config)
  ones = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones))
  return count_params(shapes['params'])


def test_parameter_counts_match_paper_sizes():
  # Shared 37k vocabulary: base 63.08M and big 214.25M (paper Table 3: ~65M / ~213M).
  assert abs(_param_count(TransformerConfig.base(37000)) - 63.08e6) < 0.05e6
  assert abs(_param_count(TransformerConfig.big(37000)) - 214.25e6) < 0.1e6


def test_unshared_embeddings_add_a_table():
  shared = _param_count(TransformerConfig.base(1000))
  unshared = _param_count(TransformerConfig.base(1000, share_embeddings=False,
                                                  logits_via_embedding=False))
  # Separate target embedding (1000 x 512) + output projection (512 x 1000 + bias).
  assert unshared - shared == 1000 * 512 + 512 * 1000 + 1000


def test_sinusoidal_positions_follow_the_formula():
  table = sinusoidal_positions(50, 16)
  for pos in (0, 1, 7, 49):
    for i in range(8):
      angle = pos / 10000 ** (2 * i / 16)
      np.testing.assert_allclose(table[pos, 2 * i], np.sin(angle), atol=1e-6)
      np.testing.assert_allclose(table[pos, 2 * i + 1], np.cos(angle), atol=1e-6)


def test_shift_right_restarts_each_segment():
  targets = jnp.array([[5, 6, 7, 8, 9, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(shift_right(targets), [[0, 5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(shift_right(targets, segments), [[0, 5, 6, 0, 8, 0]])


def test_decoder_is_causal(forward, tiny_params):
  src, tgt = _tokens(1, (2, S)), _tokens(2, (2, T))
  base = forward(tiny_params, src, tgt)
  for t in (0, 3, 6):
    changed = tgt.at[:, t + 1].set((tgt[:, t + 1] + 5) % 37 + 3)
    out = forward(tiny_params, src, changed)
    # Output at position p reads inputs up to p (targets up to p-1 after the shift).
    np.testing.assert_allclose(out[:, :t + 2], base[:, :t + 2], atol=1e-5)
    assert not np.allclose(out[:, t + 2:], base[:, t + 2:], atol=1e-3)


def test_padding_does_not_change_real_positions(forward, tiny_params):
  src, tgt = _tokens(3, (2, S)), _tokens(4, (2, T))
  src = src.at[1, 7:].set(0)  # row 1 has a shorter source
  tgt = tgt.at[1, 6:].set(0)
  base = forward(tiny_params, src, tgt)
  padded = forward(tiny_params, jnp.pad(src, ((0, 0), (0, 5))), jnp.pad(tgt, ((0, 0), (0, 4))))
  np.testing.assert_allclose(padded[0, :T], base[0], atol=1e-5)
  np.testing.assert_allclose(padded[1, :6], base[1, :6], atol=1e-5)
  # Changing what sits under the padding must not matter either.
  noise = src.at[1, 7:].set(5)
  assert not np.allclose(forward(tiny_params, noise, tgt)[1], base[1], atol=1e-3)


def test_packed_sequences_match_separate_runs(forward, tiny_params):
  a_src, a_tgt = _tokens(5, (1, 4)), _tokens(6, (1, 5))
  b_src, b_tgt = _tokens(7, (1, 6)), _tokens(8, (1, 4))
  pack = lambda a, b, n: jnp.concatenate([a, b, jnp.zeros((1, n - a.shape[1] - b.shape[1]),
                                                           a.dtype)], axis=1)
  seg = lambda a, b, n: pack(jnp.ones_like(a), 2 * jnp.ones_like(b), n)
  pos = lambda a, b, n: pack(jnp.arange(a.shape[1])[None], jnp.arange(b.shape[1])[None], n)
  packed = forward(tiny_params, pack(a_src, b_src, S), pack(a_tgt, b_tgt, T),
                   inputs_positions=pos(a_src, b_src, S),
                   targets_positions=pos(a_tgt, b_tgt, T),
                   inputs_segmentation=seg(a_src, b_src, S),
                   targets_segmentation=seg(a_tgt, b_tgt, T))
  alone_a = forward(tiny_params, jnp.pad(a_src, ((0, 0), (0, S - 4))),
                    jnp.pad(a_tgt, ((0, 0), (0, T - 5))))
  alone_b = forward(tiny_params, jnp.pad(b_src, ((0, 0), (0, S - 6))),
                    jnp.pad(b_tgt, ((0, 0), (0, T - 4))))
  np.testing.assert_allclose(packed[0, :5], alone_a[0, :5], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:9], alone_b[0, :4], atol=1e-5)


def _cached_step(model, params, src):
  """Jitted one-token decoding step over the cache for source ids `src`:
  (cache, previous token [rows, 1]) -> (logits [rows, V], new cache)."""
  encoded = jax.jit(model.apply, static_argnames='method')(
      {'params': params}, src, method=Transformer.encode)

  @jax.jit
  def step(cache, token):
    logits, state = model.apply({'params': params, 'cache': cache}, encoded, src, token,
                                use_cache=True, method=Transformer.decode, mutable=['cache'])
    return logits[:, 0], state['cache']
  return step


@pytest.mark.parametrize('pre_norm', [False, True])
def test_cached_decoding_equals_full_forward(tiny_config, pre_norm):
  """Two hypotheses per sentence (as beams are laid out), decoded one token at a time
  over the cache, give the logits of the teacher-forced forward pass."""
  cfg = tiny_config.replace(pre_norm=pre_norm)
  model = Transformer(cfg)
  src, tgt = _tokens(9, (2, S)), _tokens(10, (2, T))
  src = src.at[0, 6:].set(0)
  params = jax.jit(model.init)(jax.random.key(1), src, tgt)['params']
  hyps = jnp.stack([tgt, tgt[::-1]], axis=1).reshape(4, T)  # row 2b + j: sentence b
  full = jax.jit(model.apply)({'params': params}, jnp.repeat(src, 2, axis=0), hyps)
  step = _cached_step(model, params, src)
  cache = init_cache(cfg, 2, T, S, beam_size=2)
  assert 'cross_attention' not in cache['decoder']['layer_0']  # recomputed, hoisted by XLA
  heads, d_k = cfg.num_heads, cfg.qk_dim
  assert cache['decoder']['layer_0']['self_attention']['cached_key'].shape == (2, heads, d_k,
                                                                               T * 2)
  assert cache['decoder']['history'].shape == (2, 2, T)
  previous = jnp.zeros((4, 1), jnp.int32)
  steps = []
  for t in range(T):
    logits, cache = step(cache, previous)
    steps.append(logits)
    previous = hyps[:, t:t + 1]
  # float32 on CPU: same arithmetic up to summation order.
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_reordered_beams_continue_their_origin(tiny_config, tiny_params, forward):
  """After `reorder_beams`, a hypothesis reads the slots of the beam it continues: the
  cached logits equal the forward pass over the spliced sequences (two reorders)."""
  src, hyps = _tokens(13, (2, S)), _tokens(14, (4, T))  # row 2b + j: sentence b, beam j
  step = _cached_step(Transformer(tiny_config), tiny_params, src)
  reorders = {3: jnp.array([[1, 1], [1, 0]]), 6: jnp.array([[0, 0], [1, 1]])}
  cache, spliced, steps = init_cache(tiny_config, 2, T, S, beam_size=2), hyps, []
  for t in range(T):
    if t in reorders:
      cache = reorder_beams(cache, reorders[t])
      # Slots 0..t-1 hold the origin's inputs: the start symbol and its targets < t-1.
      rows = (jnp.arange(2)[:, None] * 2 + reorders[t]).reshape(4)
      spliced = jnp.concatenate([spliced[rows, :t - 1], hyps[:, t - 1:]], axis=1)
    previous = jnp.zeros((4, 1), jnp.int32) if t == 0 else hyps[:, t - 1:t]
    logits, cache = step(cache, previous)
    steps.append((logits, spliced))
  for t, (logits, sequences) in enumerate(steps):
    full = forward(tiny_params, jnp.repeat(src, 2, axis=0), sequences)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-4, rtol=1e-4, err_msg=f'step {t}')
  assert not np.allclose(spliced, hyps)  # the reorders really changed the prefixes
  with pytest.raises(ValueError, match='3 decoder rows do not split'):
    step(cache, jnp.zeros((3, 1), jnp.int32))


def test_bf16_compute_stays_close_to_fp32(tiny_config, tiny_params):
  src, tgt = _tokens(11, (2, S)), _tokens(12, (2, T))
  fp32 = jax.jit(Transformer(tiny_config).apply)({'params': tiny_params}, src, tgt)
  bf16 = jax.jit(Transformer(tiny_config.replace(dtype=jnp.bfloat16)).apply)(
      {'params': tiny_params}, src, tgt)
  assert bf16.dtype == jnp.float32  # logits come back in float32 for the loss
  p32, p16 = jax.nn.softmax(fp32), jax.nn.softmax(bf16)
  assert float(jnp.abs(p32 - p16).max()) < 0.02
  assert float(jnp.mean(jnp.argmax(fp32, -1) == jnp.argmax(bf16, -1))) > 0.9


def test_dropout_is_active_only_when_not_deterministic(tiny_config):
  cfg = tiny_config.replace(dropout_rate=0.3, attention_dropout_rate=0.2)
  model = Transformer(cfg)
  src, tgt = _tokens(13, (2, S)), _tokens(14, (2, T))
  params = jax.jit(model.init)(jax.random.key(0), src, tgt)['params']
  apply = jax.jit(model.apply, static_argnames='deterministic')
  run = lambda seed: apply({'params': params}, src, tgt, deterministic=False,
                           rngs={'dropout': jax.random.key(seed)})
  np.testing.assert_allclose(apply({'params': params}, src, tgt),
                             apply({'params': params}, src, tgt))
  assert not np.allclose(run(0), run(1))
  np.testing.assert_allclose(run(2), run(2))


def test_attention_weights_are_sown_for_visualisation(tiny_config, tiny_params):
  src, tgt = _tokens(15, (1, S)), _tokens(16, (1, T))
  src = src.at[0, 8:].set(0)
  apply = jax.jit(Transformer(tiny_config).apply, static_argnames='mutable')
  _, state = apply({'params': tiny_params}, src, tgt, mutable=('intermediates',))
  inter = state['intermediates']
  enc = inter['encoder']['layer_0']['self_attention']['attention_weights'][0]
  dec = inter['decoder']['layer_1']['self_attention']['attention_weights'][0]
  cross = inter['decoder']['layer_0']['cross_attention']['attention_weights'][0]
  assert enc.shape == (1, 4, S, S) and dec.shape == (1, 4, T, T) and cross.shape == (1, 4, T, S)
  np.testing.assert_allclose(enc.sum(-1), 1.0, atol=1e-5)
  assert float(enc[..., 8:].max()) == 0.0  # padded source keys get no weight
  assert float(jnp.triu(dec[0, 0], k=1).max()) == 0.0  # no weight on future targets


def test_learned_positions_and_unshared_vocab_run(tiny_config):
  cfg = tiny_config.replace(positional='learned', share_embeddings=False,
                            logits_via_embedding=False, target_vocab_size=30)
  model = Transformer(cfg)
  src, tgt = _tokens(17, (2, S)), _tokens(18, (2, T), vocab=30)
  params = jax.jit(model.init)(jax.random.key(0), src, tgt)['params']
  assert 'pos_embedding' in params['source_embed'] and 'target_embed' in params
  assert jax.jit(model.apply)({'params': params}, src, tgt).shape == (2, T, 30)


def test_parameters_carry_logical_axis_names(tiny_config):
  model = Transformer(tiny_config)
  ones = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones))['params']
  names = {tuple(x.names) for x in jax.tree.leaves(
      boxed, is_leaf=lambda x: hasattr(x, 'names'))}
  assert {('vocab', 'embed'), ('embed', 'heads', 'kv'), ('heads', 'kv', 'embed'),
          ('embed', 'mlp'), ('mlp', 'embed'), ('embed',)} <= names


@pytest.mark.parametrize('kwargs, message', [
    (dict(d_model=30, num_heads=4), 'not divisible'),
    (dict(positional='rotary'), 'positional'),
    (dict(remat='some'), 'remat'),
    (dict(target_vocab_size=7), 'share_embeddings'),
    (dict(num_heads=0), 'num_heads must be a positive integer'),
    (dict(num_decoder_layers=0), 'num_decoder_layers must be a positive integer'),
    (dict(d_k=0), 'd_k must be a positive integer'),
    (dict(d_model=32.0), 'd_model must be a positive integer'),
    (dict(dropout_rate=1.5), r'dropout_rate must be in \[0, 1\)'),
])
def test_bad_config_errors_clearly(kwargs, message):
  with pytest.raises(ValueError, match=message):
    TransformerConfig(vocab_size=40, **kwargs)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_the_same_gradients(tiny_config, tiny_params, remat):
  src, tgt = _tokens(19, (2, S)), _tokens(20, (2, T))

  def loss(cfg, p):
    return jnp.mean(Transformer(cfg).apply({'params': p}, src, tgt) ** 2)

  g_ref = jax.jit(jax.grad(lambda p: loss(tiny_config, p)))(tiny_params)
  g_remat = jax.jit(jax.grad(lambda p: loss(tiny_config.replace(remat=remat), p)))(tiny_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g_ref, g_remat)


def test_model_train_step_and_decoding_import_without_tensorflow_or_ml_collections():
  """What an accelerator image without TensorFlow or ml_collections runs (bench_mfu, the
  train step, decoding, scoring, the fused loss) imports neither."""
  code = ('import sys, transformer_jax\n'
          'from transformer_jax import decoding, inference, scoring\n'
          'from transformer_jax.training import loss, train_lib\n'
          'bad = {"tensorflow", "ml_collections"} & set(sys.modules)\n'
          'assert not bad, f"imported {bad}"; print("ok")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr


def test_sequences_longer_than_the_position_table_are_refused(tiny_config, tiny_params):
  too_long = jnp.ones((1, tiny_config.max_len + 1), jnp.int32)
  with pytest.raises(ValueError, match='exceeds max_len'):
    Transformer(tiny_config).apply({'params': tiny_params}, too_long, too_long[:, :4])
  with pytest.raises(ValueError, match='exceed max_len'):
    init_cache(tiny_config, 1, tiny_config.max_len + 1, 4)


def test_explicit_and_fused_attention_agree_and_d_v_may_differ(tiny_config, tiny_params):
  src, tgt = _tokens(21, (2, S)), _tokens(22, (2, T))
  src = src.at[1, 5:].set(0)
  apply = jax.jit(Transformer(tiny_config).apply, static_argnames='mutable')
  fused = apply({'params': tiny_params}, src, tgt)
  explicit, _ = apply({'params': tiny_params}, src, tgt, mutable=('intermediates',))
  np.testing.assert_allclose(fused, explicit, atol=1e-5)
  # Table 3 row B: d_k != d_v (jax.nn.dot_product_attention needs them equal).
  cfg = tiny_config.replace(d_k=4, d_v=12)
  model = Transformer(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), src, tgt)['params'])
  assert params['encoder']['layer_0']['self_attention']['value']['kernel'].shape == (4, 12, 32)
  assert jax.jit(model.apply)({'params': params}, src, tgt).shape == (2, T, 40)


def test_attention_values_layout_is_only_a_layout(tiny_config, tiny_params, monkeypatch):
  """The backend policy's heads-major value product computes the same attention."""
  src, tgt = _tokens(21, (2, S)), _tokens(22, (2, T))
  outputs = []
  for heads_major in (True, False):
    monkeypatch.setattr(backend, 'policy',
                        lambda h=heads_major: backend.Policy(heads_major_values=h))
    outputs.append(Transformer(tiny_config).apply({'params': tiny_params}, src, tgt,
                                                  mutable=('intermediates',))[0])
  np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-6)


@pytest.mark.parametrize('rows', [8, 9])
def test_project_is_x_times_kernel_transposed_on_both_paths(rows, monkeypatch):
  """linear.project takes the weights-major path up to the backend policy's
  `weights_major_max_rows` (here 8) and the plain dot beyond: both must compute x · Wᵀ
  over the trailing input axes."""
  monkeypatch.setattr(backend, 'policy', lambda: backend.Policy(weights_major_max_rows=8))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(rows, 1, 4, 3)).astype(np.float32)
  kernel = rng.normal(size=(5, 4, 3)).astype(np.float32)  # [out, *in]
  want = np.einsum('blnh,dnh->bld', x, kernel)
  np.testing.assert_allclose(jax.jit(linear.project, static_argnums=2)(x, kernel, 2), want,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r'input axes \(4, 3\) do not match kernel \(5, 3, 4\)'):
    linear.project(x, kernel.transpose(0, 2, 1), 2)
