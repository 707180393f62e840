"""The training system: config schema, train state, optimizer, jitted train/eval steps, loop.

Everything up to the loop is pure JAX (no TensorFlow): `make_train_step` and
`make_eval_step` build jitted functions over global arrays, with explicit
shardings on a `jax.sharding.Mesh`, so they run unchanged on one CPU or a pod.
`train_and_evaluate` wires them to the input pipeline, checkpoints and metrics.

Batches are dicts of int32 [B, L] arrays: `inputs`, `targets` and, when packed,
`inputs_position`, `targets_position`, `inputs_segmentation`,
`targets_segmentation`. With gradient accumulation over k micro-batches a step
takes [k·B, L] rows interleaved as `stack_micro_batches` lays them out.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh

from transformer_jax import metrics as metrics_lib
from transformer_jax import sharding
from transformer_jax.model import Transformer, TransformerConfig

Array = jax.Array
Batch = Mapping[str, Any]

# Batch keys -> keyword arguments of `Transformer.__call__`.
_BATCH_TO_MODEL = {'inputs_position': 'inputs_positions', 'targets_position': 'targets_positions',
                   'inputs_segmentation': 'inputs_segmentation',
                   'targets_segmentation': 'targets_segmentation'}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# Config keys that shape the training batches: a checkpoint's data-iterator position only
# fits an input pipeline built with the same values (checked on restore).
_DATA_KEYS = ('dataset', 'tfds_name', 'train_split', 'source_lang', 'target_lang', 'max_len',
              'batching', 'batch_size', 'tokens_per_batch', 'bucket_boundaries',
              'shuffle_buffer', 'seed')


def default_config():
  """The full training ConfigDict with the paper's recipe as defaults (base, WMT14 EN→DE).

  Every key a config may set is here; `validate_config` rejects any other.
  """
  import ml_collections
  from ml_collections.config_dict import placeholder
  c = ml_collections.ConfigDict()
  # Data (transformer_jax.input_pipeline).
  c.dataset = 'tfds'  # 'bible' | 'tfds' | 'text'
  c.tfds_name = 'wmt14_translate/de-en'
  c.tfds_data_dir = ''
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.test_split = 'test'
  c.source_lang = 'en'
  c.target_lang = 'de'  # also picks BLEU's tokenizer: sacreBLEU's zh / ja-mecab / ko-mecab
  for split in ('train', 'eval', 'test'):
    c[f'{split}_source'] = ''
    c[f'{split}_target'] = ''
  c.vocab_path = ''  # '' = <workdir>/spm.model, trained on first use.
  c.vocab_size = 37000  # shared source-target vocabulary (paper §5.1).
  c.vocab_model_type = 'bpe'
  c.vocab_max_sentences = 1_000_000
  c.max_len = 256
  c.max_eval_len = 256
  c.batching = 'tokens'  # 'pack' | 'tokens'
  c.batch_size = 64  # rows per batch with 'pack'
  c.tokens_per_batch = 25000  # source (and target) tokens per step (paper §5.1).
  c.bucket_boundaries = ()
  c.shuffle_buffer = 100_000
  c.seed = 0
  c.spm_alpha = 0.0  # > 0: subword regularisation of the train split (input_pipeline).
  c.spm_nbest_size = -1  # segmentations sampled among (unigram; -1: all).
  c.init_from = ''  # a training workdir whose parameters start this run (fine-tuning).
  # Model: TransformerConfig fields except the vocabulary sizes (from the tokenizer).
  c.model = ml_collections.ConfigDict(dict(
      d_model=512, d_ff=2048, num_heads=8, d_k=placeholder(int), d_v=placeholder(int),
      num_encoder_layers=6, num_decoder_layers=6, dropout_rate=0.1,
      attention_dropout_rate=0.0, max_len=512, positional='sinusoidal',
      share_embeddings=True, logits_via_embedding=True, pre_norm=False,
      layer_norm_epsilon=1e-6, dtype='float32', param_dtype='float32',
      attention_impl=placeholder(str), remat='none'))
  # Optimisation (paper §5.3-5.4).
  c.label_smoothing = 0.1
  c.warmup_steps = 4000
  c.learning_rate_multiplier = 1.0
  c.cooldown_steps = 0  # > 0: lr decays linearly toward 0 over the last so many steps.
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  c.adam_eps = 1e-9
  c.grad_clip_norm = 0.0  # 0: no clipping.
  c.grad_accum_steps = 1  # micro-batches per optimizer step.
  c.num_train_steps = 100_000
  c.train_minutes = 0.0  # wall-clock training budget (evaluation excluded); 0: none.
  # Evaluation, logging, checkpoints.
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.eval_every_minutes = 0.0  # also evaluate every so many training minutes; 0: off.
  c.num_eval_batches = -1  # -1: the whole eval split.
  c.num_bleu_sentences = 500  # sentences decoded for BLEU at each evaluation; 0: none, -1: all.
  c.bleu_split = 'eval'  # 'eval' | 'test': the split those sentences come from.
  c.decode_batch_size = 32  # sentences per decoding batch for BLEU.
  c.max_decode_len = 256
  c.save_every_steps = 1000
  c.keep_checkpoints = 5
  c.async_checkpointing = True  # False on CPU-only hosts: the writer competes for the cores.
  c.average_last = 5  # checkpoints averaged at the end (paper: last 5); 0: none.
  c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); per slice with dcn_mesh_shape.
  c.dcn_mesh_shape = ()  # multi-slice TPU: mesh across slices, e.g. (2, 1, 1); (): one slice.
  c.peak_tflops = 0.0  # device peak for MFU; 0: from metrics.PEAK_TFLOPS.
  c.progress_bar = True
  return c


def load_config(spec: str) -> Any:
  """The ConfigDict of a config file, `path.py` or `path.py:arg` (as `--config=` takes).

  Raises ValueError naming the file if it is missing, lacks `get_config`, or has
  unknown keys.
  """
  import importlib.util
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'config file {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path!r} has no get_config() function')
  config = module.get_config(arg) if arg else module.get_config()
  validate_config(config)
  return config


def _unknown_keys(config: Mapping[str, Any], reference: Mapping[str, Any],
                  prefix: str = '') -> list[str]:
  unknown = []
  for key in config.keys():
    if key not in reference:
      unknown.append(prefix + key)
    elif hasattr(reference[key], 'keys'):
      unknown += _unknown_keys(config[key], reference[key], f'{prefix}{key}.')
  return unknown


# Numeric keys checked by `validate_config`: the rule each value must satisfy (the model's
# values are checked by TransformerConfig itself).
_VALUE_RULES = (
    (('vocab_size', 'max_len', 'max_eval_len', 'batch_size', 'tokens_per_batch', 'shuffle_buffer',
      'warmup_steps', 'learning_rate_multiplier', 'grad_accum_steps', 'log_every_steps',
      'eval_every_steps', 'save_every_steps', 'decode_batch_size', 'max_decode_len'),
     '> 0', lambda v: v > 0),
    (('num_train_steps', 'train_minutes', 'eval_every_minutes', 'cooldown_steps',
      'grad_clip_norm', 'average_last', 'spm_alpha'), '>= 0', lambda v: v >= 0),
    (('label_smoothing',), 'in [0, 1)', lambda v: 0 <= v < 1),
    (('num_eval_batches',), '-1 (all) or > 0', lambda v: v == -1 or v > 0),
    (('num_bleu_sentences',), '-1 (all) or >= 0', lambda v: v >= -1),
)


def validate_config(config: Mapping[str, Any]) -> None:
  """Raise ValueError naming every key `default_config` does not know, or every numeric
  value out of its range (e.g. batch_size <= 0, warmup_steps 0, dropout_rate >= 1, or
  max_len / max_eval_len longer than model.max_len)."""
  unknown = _unknown_keys(config, default_config())
  if unknown:
    raise ValueError(f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                     'see transformer_jax.train_lib.default_config for the valid keys')
  get = lambda key: functools.reduce(lambda c, k: c[k], key.split('.'), config)
  bad = [f'config.{key}={get(key)!r} must be {rule}' for keys, rule, ok in _VALUE_RULES
         for key in keys if not (isinstance(get(key), (int, float)) and ok(get(key)))]
  if not bad:
    try:  # TransformerConfig's own checks, before the (slow) data set-up
      model_config(config, get('vocab_size'))
    except ValueError as e:
      bad = [str(e)]
  if not bad:  # the lengths are positive numbers: do they fit the position table?
    bad = [f'config.{key}={get(key)} exceeds config.model.max_len={get("model.max_len")}, '
           'the positions the model has' for key in ('max_len', 'max_eval_len')
           if get(key) > get('model.max_len')]
  if bad:
    raise ValueError('; '.join(bad))


def model_config(config: Any, vocab_size: int) -> TransformerConfig:
  """TransformerConfig from `config.model` and the tokenizer's vocabulary size; a value
  it refuses is a ValueError naming the config.model key."""
  values = dict(config.model.to_dict() if hasattr(config.model, 'to_dict') else config.model)
  for key in ('dtype', 'param_dtype'):
    if values[key] not in _DTYPES:
      raise ValueError(f'config.model.{key}={values[key]!r}: expected one of {sorted(_DTYPES)}')
    values[key] = _DTYPES[values[key]]
  try:
    return TransformerConfig(vocab_size=vocab_size, **values)
  except (ValueError, TypeError) as e:
    raise ValueError(f'config.model: {e}') from None


# ------------------------------------------------------------------------- optimizer


def learning_rate_schedule(d_model: int, warmup_steps: int, multiplier: float = 1.0,
                           cooldown_steps: int = 0, total_steps: int = 0) -> optax.Schedule:
  """Paper eq. 3 as a function of the 1-based step s (update s of `total_steps`):

  lr(s) = multiplier · d_model^-0.5 · min(s^-0.5, s · warmup^-1.5),

  times min(1, (total_steps + 1 - s) / (cooldown_steps + 1)) when `cooldown_steps` > 0:
  the last `cooldown_steps` updates decay linearly, by 1/(cooldown_steps + 1) of the rate
  each, toward the 0 that step total_steps + 1 would have; every update of the run keeps a
  positive rate (not in the paper; for short runs).
  """
  def schedule(step):
    s = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    lr = multiplier * d_model ** -0.5 * jnp.minimum(s ** -0.5, s * warmup_steps ** -1.5)
    if cooldown_steps:
      lr = lr * jnp.clip((total_steps + 1 - s) / (cooldown_steps + 1), 0.0, 1.0)
    return lr
  return schedule


def create_optimizer(config: Any, d_model: int) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
  """Adam(b1, b2, eps) on the paper's schedule, after optional global-norm clipping.

  Returns (optimizer, schedule); optax counts updates from 0, so update n uses lr(n + 1).
  """
  schedule = learning_rate_schedule(d_model, config.warmup_steps,
                                    config.learning_rate_multiplier, config.cooldown_steps,
                                    config.num_train_steps)
  adam = optax.adam(lambda count: schedule(count + 1), b1=config.adam_b1,
                    b2=config.adam_b2, eps=config.adam_eps)
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam), schedule
  return adam, schedule


# ---------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: a plain pytree that orbax saves as is.

  `rng` is raw uint32 key data (`jax.random.key_data`); dropout keys are folded
  from it with the step, so it never changes.
  """
  step: Array
  params: Any
  opt_state: Any
  rng: Array


def _dummy_batch(model_cfg: TransformerConfig) -> tuple[Array, Array]:
  ones = jnp.ones((1, min(8, model_cfg.max_len)), jnp.int32)
  return ones, ones


def _init_state(model_cfg: TransformerConfig, optimizer: optax.GradientTransformation,
                rng: Array, boxed: bool = False) -> TrainState:
  """TrainState at step 0; `boxed` keeps flax's logical-axis boxes (for the shardings)."""
  init_rng, train_rng = jax.random.split(rng)
  params = Transformer(model_cfg).init(init_rng, *_dummy_batch(model_cfg))['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params), rng=jax.random.key_data(train_rng))
  return state if boxed else nn.meta.unbox(state)


def state_shardings(model_cfg: TransformerConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> Any:
  """NamedShardings for every leaf of the TrainState (from the params' logical axes)."""
  with sharding.axis_rules():
    boxed = jax.eval_shape(functools.partial(_init_state, model_cfg, optimizer, boxed=True),
                           jax.random.key(0))
  return sharding.tree_shardings(boxed, mesh)


def create_train_state(model_cfg: TransformerConfig, optimizer: optax.GradientTransformation,
                       mesh: Mesh, seed: int) -> TrainState:
  """Initialise the state directly into its shardings on `mesh` (jitted, out_shardings)."""
  shardings = state_shardings(model_cfg, optimizer, mesh)
  init = jax.jit(functools.partial(_init_state, model_cfg, optimizer), out_shardings=shardings)
  with sharding.use_mesh(mesh):
    return init(jax.random.key(seed))


def abstract_train_state(model_cfg: TransformerConfig, optimizer: optax.GradientTransformation,
                         mesh: Mesh) -> TrainState:
  """ShapeDtypeStructs of the state with `.sharding` set (what orbax restores into)."""
  shapes = jax.eval_shape(functools.partial(_init_state, model_cfg, optimizer),
                          jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings(model_cfg, optimizer, mesh))


# ---------------------------------------------------------------------------- steps


def stack_micro_batches(batches: Sequence[Batch]) -> dict[str, np.ndarray]:
  """k batches of [B, L_i] -> one [k·B, L] batch, row b·k + j = row b of batch j.

  Shorter rows are zero-padded to the longest L (padding is masked). Interleaving
  keeps each device's rows on the device when the step splits them back.
  """
  if len(batches) == 1:
    return dict(batches[0])
  out = {}
  for key in batches[0]:
    arrays = [np.asarray(b[key]) for b in batches]
    rows = {a.shape[0] for a in arrays}
    if len(rows) != 1:
      raise ValueError(f'micro-batches differ in batch size {sorted(rows)}; gradient '
                       "accumulation needs fixed-size batches (batching='pack')")
    length = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, ((0, 0), (0, length - a.shape[1]))) for a in arrays]
    out[key] = np.stack(padded, axis=1).reshape(-1, length)
  return out


def _split_micro_batches(batch: Batch, k: int) -> dict[str, Array]:
  """[k·B, L] interleaved rows -> [k, B, L] (inverse of `stack_micro_batches`)."""
  return {key: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
          for key, x in batch.items()}


def _forward(model: Transformer, params: Any, batch: Batch, deterministic: bool,
             rng: Optional[Array] = None) -> Array:
  extra = {_BATCH_TO_MODEL[k]: v for k, v in batch.items() if k in _BATCH_TO_MODEL}
  rngs = None if deterministic else {'dropout': rng}
  return model.apply({'params': params}, batch['inputs'], batch['targets'],
                     deterministic=deterministic, rngs=rngs, **extra)


def train_step_fn(state: TrainState, batch: Batch, *, model: Transformer,
                  optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                  label_smoothing: float, grad_accum_steps: int) -> tuple[TrainState, dict]:
  """One optimizer step: gradients of the loss per real target token of the whole batch.

  With k = grad_accum_steps > 1 the batch is split into k micro-batches whose
  gradients and token counts are summed by a `lax.scan` before one division, so
  the update equals that of one k-times-larger batch. Returns (new state, summed
  metrics + grad_norm + learning_rate).
  """
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params, micro, key):
    terms = metrics_lib.loss_terms(_forward(model, params, micro, False, key),
                                   micro['targets'], label_smoothing)
    return terms['loss'], terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, sums), grads = grad_fn(state.params, batch, dropout_key)
  else:
    micro = _split_micro_batches(batch, grad_accum_steps)

    def accumulate(carry, xs):
      one, index = xs
      (_, terms), grads = grad_fn(state.params, one, jax.random.fold_in(dropout_key, index))
      return jax.tree.map(jnp.add, carry, (grads, terms)), None

    (_, terms_shape), grads_shape = jax.eval_shape(
        grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), dropout_key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, terms_shape))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(grad_accum_steps)))
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums['tokens'], 1.0), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return new_state, {**sums, 'grad_norm': optax.tree.norm(grads),
                     'learning_rate': schedule(state.step + 1)}


def eval_step_fn(params: Any, batch: Batch, *, model: Transformer,
                 label_smoothing: float) -> dict[str, Array]:
  """Summed loss terms (see `metrics.loss_terms`) of one batch, dropout off."""
  return metrics_lib.loss_terms(_forward(model, params, batch, True), batch['targets'],
                                label_smoothing)


def _traced_in(mesh: Mesh, fn: Callable) -> Callable:
  """Call `fn` with `mesh` current and the logical-axis rules active (both apply while
  tracing, so the model's activation sharding constraints take effect). The result's
  `.lower(*args)` lowers the jitted `fn` the same way (ahead-of-time compilation)."""
  @functools.wraps(fn)
  def wrapped(*args):
    with sharding.use_mesh(mesh):
      return fn(*args)

  def lower(*args):
    with sharding.use_mesh(mesh):
      return fn.lower(*args)
  wrapped.lower = lower
  return wrapped


def make_train_step(model_cfg: TransformerConfig, config: Any, mesh: Mesh,
                    optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable[[TrainState, Batch],
                                                          tuple[TrainState, dict]]:
  """Jitted `train_step(state, batch) -> (state, metrics)`; the state buffers are donated."""
  state_sh = state_shardings(model_cfg, optimizer, mesh)
  step = jax.jit(
      functools.partial(train_step_fn, model=Transformer(model_cfg), optimizer=optimizer,
                        schedule=schedule, label_smoothing=config.label_smoothing,
                        grad_accum_steps=config.grad_accum_steps),
      in_shardings=(state_sh, sharding.batch_sharding(mesh)),
      out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  return _traced_in(mesh, step)


def make_eval_step(model_cfg: TransformerConfig, config: Any, mesh: Mesh,
                   optimizer: optax.GradientTransformation) -> Callable[[Any, Batch], dict]:
  """Jitted `eval_step(params, batch) -> summed metrics` (see `metrics.loss_terms`)."""
  params_sh = state_shardings(model_cfg, optimizer, mesh).params
  step = jax.jit(functools.partial(eval_step_fn, model=Transformer(model_cfg),
                                   label_smoothing=config.label_smoothing),
                 in_shardings=(params_sh, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
  return _traced_in(mesh, step)


class _SyntheticBatches:
  """The iterator `synthetic_batches` returns; get_state/set_state save its position."""

  def __init__(self, batch_size: int, length: int, vocab_size: int, seed: int):
    self._shape, self._vocab_size = (batch_size, length), vocab_size
    self._rng = np.random.default_rng(seed)

  def __iter__(self) -> '_SyntheticBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    (batch_size, length), batch = self._shape, {}
    for key in ('inputs', 'targets'):
      tokens = self._rng.integers(3, self._vocab_size, (batch_size, length), dtype=np.int32)
      lengths = self._rng.integers(length // 2, length + 1, (batch_size, 1))
      batch[key] = np.where(np.arange(length) < lengths, tokens, 0).astype(np.int32)
    return batch

  def get_state(self) -> dict[str, Any]:
    return self._rng.bit_generator.state  # JSON-able: what a checkpoint stores.

  def set_state(self, state: dict[str, Any]) -> None:
    self._rng.bit_generator.state = state


def synthetic_batches(batch_size: int, length: int, vocab_size: int,
                      seed: int = 0) -> _SyntheticBatches:
  """Endless random [B, L] batches (ids >= 3, a random tail padded): no TF, for benchmarks.

  The iterator's position can be checkpointed (`get_state`/`set_state`), so a resumed
  run sees the batches an uninterrupted one would have.
  """
  return _SyntheticBatches(batch_size, length, vocab_size, seed)


# ----------------------------------------------------------------------------- loop


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raise FloatingPointError naming `step` if its loss or gradient norm is NaN/Inf."""
  bad = {k: metrics[k] for k in ('loss', 'grad_norm') if not np.isfinite(metrics[k])}
  if bad:
    detail = ', '.join(f'{k}={v}' for k, v in bad.items())
    raise FloatingPointError(f'non-finite training metrics at step {step} ({detail}); '
                             'stopping. Lower the learning rate or enable grad_clip_norm; '
                             'the last checkpoint is kept')


def _as_numpy(batches: Any) -> Iterable[dict[str, np.ndarray]]:
  """Numpy batches from a tf.data.Dataset or any iterable of dicts."""
  return batches.as_numpy_iterator() if hasattr(batches, 'as_numpy_iterator') else batches


def evaluate(eval_step: Callable, params: Any, batches: Any, mesh: Mesh,
             num_batches: int = -1) -> dict[str, float]:
  """Per-token loss, nll, accuracy and perplexity over `batches` (-1: all of them)."""
  sums = None
  for i, batch in enumerate(_as_numpy(batches)):
    if 0 <= num_batches <= i:
      break
    out = eval_step(params, sharding.shard_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError('the evaluation split yielded no batches')
  return metrics_lib.summarize(jax.device_get(sums))


def translate_and_score(params: Any, model_cfg: TransformerConfig, tokenizer: Any,
                        pairs: Sequence[tuple[str, str]], batch_size: int,
                        max_source_len: int, beam_size: int = 1, alpha: float = 0.6,
                        mesh: Optional[Mesh] = None, *,
                        target_lang: str) -> tuple[Any, list[str]]:
  """Translate the sources of (source, reference) `pairs` greedily (beam_size 1) or with
  beam search: -> (`bleu.BleuScores`: sacreBLEU and tokenized BLEU with the defaults of
  `target_lang`, hypotheses).

  With `mesh` (one process only), each batch is split over its devices and decoded per
  device (`translate.make_translate_fn`)."""
  from transformer_jax import bleu, translate  # sentencepiece / sacrebleu, no TF.
  translate_fn = translate.make_translate_fn(
      translate.LoadedModel(params, model_cfg, tokenizer), beam_size=beam_size, alpha=alpha,
      mesh=mesh)
  hypotheses = translate.translate_lines([s for s, _ in pairs], translate_fn, tokenizer,
                                         batch_size=batch_size, max_source_len=max_source_len,
                                         progress=False)
  return bleu.corpus_bleu(hypotheses, [t for _, t in pairs],
                          target_lang=target_lang), hypotheses


def _datasets(config: Any, workdir: str, mesh: Mesh) -> tuple[Any, Any, Any, Any]:
  """(tokenizer, train iterator, eval batches, test batches) for `config.dataset`.

  'synthetic' needs no TensorFlow: random tokens, no tokenizer (tests, benchmarks).
  """
  if config.dataset == 'synthetic':
    def batches(seed):
      return synthetic_batches(config.batch_size, config.max_len, config.vocab_size, seed)
    eval_batches = [next(iter(batches(config.seed + 1)))]
    return None, batches(config.seed), eval_batches, eval_batches
  from transformer_jax import input_pipeline  # tf.data: imported only when training.
  index, count = sharding.batch_split(mesh)
  return input_pipeline.get_datasets(config, workdir, index, count)


class _Interval:
  """Sums of the step metrics and the wall time since the last log line."""

  def __init__(self):
    self.sums, self.steps, self.seconds = {}, 0, 0.0
    self.source_tokens, self.flops = 0.0, 0.0

  def add(self, metrics: Mapping[str, float], seconds: float, source_tokens: float,
          flops: float) -> None:
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.steps += 1
    self.seconds += seconds
    self.source_tokens += source_tokens
    self.flops += flops

  def scalars(self, peak: Optional[float]) -> dict[str, float]:
    out = {f'train/{k}': v for k, v in metrics_lib.summarize(self.sums).items()}
    out.update({'train/learning_rate': self.sums['learning_rate'] / self.steps,
                'train/grad_norm': self.sums['grad_norm'] / self.steps,
                'perf/step_time_s': self.seconds / self.steps,
                'perf/target_tokens_per_s': self.sums['tokens'] / self.seconds,
                'perf/source_tokens_per_s': self.source_tokens / self.seconds,
                'perf/model_tflops_per_s': self.flops / self.seconds / 1e12})
    if peak:
      out['perf/mfu'] = self.flops / self.seconds / peak
    return out


def _progress_bar(config: Any, start_step: int, start_seconds: float, enabled: bool):
  """tqdm bar over the time budget (seconds) if there is one, else over the steps."""
  import tqdm
  if config.train_minutes:
    return tqdm.tqdm(total=round(config.train_minutes * 60), initial=round(start_seconds),
                     unit='s', disable=not enabled,
                     bar_format='{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]')
  return tqdm.tqdm(total=config.num_train_steps, initial=start_step, unit='step',
                   disable=not enabled)


def train_and_evaluate(config: Any, workdir: str) -> TrainState:
  """Train `config` in `workdir` (resuming from its checkpoints); returns the final state.

  Stops at `num_train_steps`, after `train_minutes` of training (evaluation time
  excluded) or on SIGTERM (after a checkpoint), evaluating every
  `eval_every_steps` (or `eval_every_minutes`) and at the end, then averages the
  last checkpoints and evaluates the average.
  """
  from transformer_jax import checkpoint  # orbax: imported only when training.
  # SIGTERM from here on (data set-up and restore included) saves and exits 0.
  with checkpoint.PreemptionGuard() as guard:
    validate_config(config)
    is_main = jax.process_index() == 0
    mesh = sharding.create_mesh(config.mesh_shape, config.dcn_mesh_shape or None)
    if config.init_from and config.dataset != 'synthetic' and is_main:
      from transformer_jax import input_pipeline  # the run uses init_from's vocabulary
      checkpoint.adopt_vocabulary(config.init_from, input_pipeline.vocab_path(config, workdir))
    tokenizer, train_iter, eval_ds, _ = _datasets(config, workdir, mesh)
    model_cfg = model_config(config, config.vocab_size if tokenizer is None
                             else tokenizer.vocab_size)
    optimizer, schedule = create_optimizer(config, model_cfg.d_model)
    vocab = None
    if tokenizer is None:
      metadata = {'model_config': checkpoint.model_config_to_dict(model_cfg)}
    else:  # the vocabulary the tokenizer was loaded from (tf.data is set up: TF is here)
      from transformer_jax import input_pipeline
      vocab = input_pipeline.vocab_path(config, workdir)
      metadata = checkpoint.training_metadata(model_cfg, vocab)
    ckpt = checkpoint.Checkpointer(
        workdir, save_every_steps=config.save_every_steps, keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
        metadata={**metadata, 'data': {key: config[key] for key in _DATA_KEYS}})
    state = ckpt.restore(abstract_train_state(model_cfg, optimizer, mesh), train_iter)
    # Written only once the checkpoints accepted this config: a refused resume must not
    # leave the workdir describing a model its checkpoints are not.
    if is_main:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
        f.write(config.to_json_best_effort(indent=2))
      checkpoint.save_model_config(workdir, model_cfg)
    if state is None:
      state = create_train_state(model_cfg, optimizer, mesh, config.seed)
      if config.init_from:  # fine-tuning: its parameters, a fresh optimizer and step 0
        params = checkpoint.load_initial_params(config.init_from, model_cfg, vocab)
        state = state.replace(params=jax.device_put(params, state_shardings(
            model_cfg, optimizer, mesh).params))
        logging.info('starting from the parameters of %s', config.init_from)
    train_step = make_train_step(model_cfg, config, mesh, optimizer, schedule)
    eval_step = make_eval_step(model_cfg, config, mesh, optimizer)
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
    counts = metrics_lib.param_split(state.params)
    peak = metrics_lib.peak_flops(jax.devices()[0], config.peak_tflops)
    step = int(state.step)
    logging.info('%s parameters (%s non-embedding); starting at step %d',
                 f"{counts['total']:,}", f"{counts['total'] - counts['embedding']:,}", step)

    bleu_pairs = []
    if tokenizer is not None and config.num_bleu_sentences:
      from transformer_jax import input_pipeline
      bleu_pairs = input_pipeline.load_raw(config, config.bleu_split)
      if config.num_bleu_sentences > 0:
        bleu_pairs = bleu_pairs[:config.num_bleu_sentences]
      from transformer_jax import bleu
      bleu.sacrebleu_metric(config.target_lang)  # its tokenizer loads, before training

    def run_eval(label: str, params: Any) -> None:
      start = time.perf_counter()
      scalars = evaluate(eval_step, params, eval_ds, mesh, config.num_eval_batches)
      if bleu_pairs:
        # Per device on one host; several processes keep the global program (each holds
        # all the sentences, and the per-device path takes process-local rows).
        scores, hypotheses = translate_and_score(
            params, model_cfg, tokenizer, bleu_pairs, config.decode_batch_size,
            config.max_eval_len, mesh=mesh if jax.process_count() == 1 else None,
            target_lang=config.target_lang)
        scalars['bleu'], scalars['bleu_tokenized'] = scores.sacrebleu, scores.tokenized
        if is_main:
          path = os.path.join(workdir, 'translations', f'{label}_step{step}.txt')
          bleu.write_hypotheses(path, hypotheses)
          logging.info('step %d %s on %d %s sentences: %s; translations in %s', step, label,
                       len(bleu_pairs), config.bleu_split, bleu.format_scores(scores), path)
      scalars['seconds'] = time.perf_counter() - start
      writer.write(step, {**{f'{label}/{k}': v for k, v in scalars.items()},
                          'train/minutes': train_seconds / 60})
      line = f'step {step} ({train_seconds / 60:.1f} train min) {label}: ' + ', '.join(
          f'{k} {v:.3f}' for k, v in scalars.items())
      logging.info('%s', line)
      if not bar.disable:
        bar.write(line)

    # The training seconds of earlier runs count against the budget (a preempted or
    # finished run resumes with what is left of it, not a new budget).
    interval, pending, eval_steps = _Interval(), None, []
    train_seconds = float(ckpt.restored_progress.get('train_seconds', 0.0))
    bar = _progress_bar(config, step, train_seconds,
                        is_main and config.progress_bar and sys.stderr.isatty())
    budget = config.train_minutes * 60 or float('inf')
    eval_interval_s = config.eval_every_minutes * 60

    def next_eval_after(seconds: float) -> float:  # the next multiple of the interval
      return (seconds // eval_interval_s + 1) * eval_interval_s if eval_interval_s else float('inf')

    next_eval_seconds = next_eval_after(train_seconds)
    last = time.perf_counter()

    def trained() -> float:  # seconds of training so far, the steps in flight included
      return train_seconds + interval.seconds + time.perf_counter() - last

    while step < config.num_train_steps and trained() < budget and not guard.should_stop(step):
      batch = stack_micro_batches([next(train_iter) for _ in range(config.grad_accum_steps)])
      source_tokens = float(np.sum(batch['inputs'] > 0))
      flops = metrics_lib.training_flops(model_cfg, counts, source_tokens,
                                         float(np.sum(batch['targets'] > 0)),
                                         batch['inputs'].shape[1], batch['targets'].shape[1])
      state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh))
      step += 1
      # Read the previous step's metrics while this one runs (one step of lag).
      if pending is not None:
        interval.add(*_finish(pending, last))
        last = time.perf_counter()
      pending = (step, step_metrics, source_tokens, flops)
      eval_due = step % config.eval_every_steps == 0 or trained() >= next_eval_seconds
      log_due = step % config.log_every_steps == 0 or eval_due
      # A checkpoint never holds a step whose loss was not checked finite.
      if log_due or step % config.save_every_steps == 0:
        interval.add(*_finish(pending, last))
        pending, last = None, time.perf_counter()
      ckpt.maybe_save(step, state, train_iter, progress={'train_seconds': trained()})
      if log_due:
        train_seconds += interval.seconds
        bar.update(round(interval.seconds) if config.train_minutes else interval.steps)
        bar.set_postfix(loss=f"{interval.sums['loss'] / interval.sums['tokens']:.3f}")
        writer.write(step, {**interval.scalars(peak), 'train/minutes': train_seconds / 60})
        interval = _Interval()
        if eval_due:
          if next_eval_seconds <= train_seconds:
            next_eval_seconds = next_eval_after(train_seconds)
          run_eval('eval', state.params)
          eval_steps.append(step)
          last = time.perf_counter()
    if pending is not None:
      interval.add(*_finish(pending, last))
    if interval.steps:
      train_seconds += interval.seconds
      writer.write(step, {**interval.scalars(peak), 'train/minutes': train_seconds / 60})
    bar.close()
    ckpt.maybe_save(step, state, train_iter, force=True,
                    progress={'train_seconds': train_seconds})
    ckpt.wait()
  if guard.requested:
    logging.warning('preempted: saved step %d, exiting', step)
  else:
    if step not in eval_steps:
      run_eval('eval', state.params)
    if config.average_last:
      checkpoint.average_checkpoints(workdir, config.average_last)
      params, _, _ = checkpoint.load_for_inference(workdir)
      run_eval('eval_averaged', params)
  ckpt.close()
  writer.close()
  return state


def _finish(pending: tuple, start: float) -> tuple[dict[str, float], float, float, float]:
  """Block on a step's metrics, check them, and return `_Interval.add` arguments."""
  step, step_metrics, source_tokens, flops = pending
  values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  check_finite(step, values)
  return values, time.perf_counter() - start, source_tokens, flops
