"""The training system: train state, jitted train/eval steps, the loop.

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

from transformer_jax.training import loss as loss_lib
from transformer_jax.training.clock import Clock
from transformer_jax.training import metrics as metrics_lib
from transformer_jax.training.optimizer import create_optimizer
from transformer_jax import sharding
from transformer_jax.training.synthetic import synthetic_batches
from transformer_jax.model import Transformer, TransformerConfig
from transformer_jax.workdir import Workdir, model_config_to_dict

Array = jax.Array
Batch = Mapping[str, Any]

# Batch keys -> keyword arguments of `Transformer.__call__`.
_BATCH_TO_MODEL = {'inputs_position': 'inputs_positions', 'targets_position': 'targets_positions',
                   'inputs_segmentation': 'inputs_segmentation',
                   'targets_segmentation': 'targets_segmentation'}


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


def _loss_terms(model: Transformer, params: Any, batch: Batch, label_smoothing: float,
                chunk_tokens: int, deterministic: bool,
                rng: Optional[Array] = None) -> dict[str, Array]:
  """Summed loss terms of a batch (`loss.chunked_loss_terms`: no [tokens, V] logits)."""
  extra = {_BATCH_TO_MODEL[k]: v for k, v in batch.items() if k in _BATCH_TO_MODEL}
  rngs = None if deterministic else {'dropout': rng}
  hidden, kernel, bias = model.apply({'params': params}, batch['inputs'], batch['targets'],
                                     deterministic=deterministic, rngs=rngs,
                                     return_hidden=True, **extra)
  return loss_lib.chunked_loss_terms(hidden, kernel, bias, batch['targets'], label_smoothing,
                                     chunk_tokens)


def train_step_fn(state: TrainState, batch: Batch, *, model: Transformer,
                  optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                  label_smoothing: float, grad_accum_steps: int,
                  loss_chunk_tokens: int) -> tuple[TrainState, dict]:
  """One optimizer step: gradients of the loss per real target token of the whole batch.

  With k = grad_accum_steps > 1 the batch is split into k micro-batches whose
  gradients and token counts are summed by a `lax.scan` before one division, so
  the update equals that of one k-times-larger batch. Returns (new state, summed
  metrics + grad_norm + learning_rate).
  """
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params, micro, key):
    terms = _loss_terms(model, params, micro, label_smoothing, loss_chunk_tokens, False, key)
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


def eval_step_fn(params: Any, batch: Batch, *, model: Transformer, label_smoothing: float,
                 loss_chunk_tokens: int) -> dict[str, Array]:
  """Summed loss terms (see `loss.loss_terms`) of one batch, dropout off."""
  return _loss_terms(model, params, batch, label_smoothing, loss_chunk_tokens, True)


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
                        grad_accum_steps=config.grad_accum_steps,
                        loss_chunk_tokens=config.loss_chunk_tokens),
      in_shardings=(state_sh, sharding.batch_sharding(mesh)),
      out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  return _traced_in(mesh, step)


def make_eval_step(model_cfg: TransformerConfig, config: Any, mesh: Mesh,
                   optimizer: optax.GradientTransformation) -> Callable[[Any, Batch], dict]:
  """Jitted `eval_step(params, batch) -> summed metrics` (see `loss.loss_terms`)."""
  params_sh = state_shardings(model_cfg, optimizer, mesh).params
  step = jax.jit(functools.partial(eval_step_fn, model=Transformer(model_cfg),
                                   label_smoothing=config.label_smoothing,
                                   loss_chunk_tokens=config.loss_chunk_tokens),
                 in_shardings=(params_sh, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
  return _traced_in(mesh, step)


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


def _datasets(config: Any, workdir: str, mesh: Mesh,
              task: Any) -> tuple[Any, Any, Any]:
  """(tokenizer, train iterator, eval batches) of `task`'s pairs (`Task.read_pairs`; a new
  vocabulary holds `Task.vocabulary_symbols`).

  'synthetic' needs no TensorFlow: random tokens, no tokenizer (tests, benchmarks).
  """
  if config.dataset == 'synthetic':
    eval_batches = [next(iter(synthetic_batches(config.batch_size, config.max_len,
                                                config.vocab_size, config.seed + 1)))]
    return None, synthetic_batches(config.batch_size, config.max_len, config.vocab_size,
                                   config.seed), eval_batches
  from transformer_jax.training import input_pipeline  # tf.data: imported only when training.
  index, count = sharding.batch_split(mesh)
  tokenizer, train_iter, eval_ds, _ = input_pipeline.get_datasets(
      config, workdir, index, count, task.read_pairs, task.vocabulary_symbols(config))
  return tokenizer, train_iter, eval_ds


class _Run:
  """What set-up gives the loop: the mesh, data, model, state, steps and writers."""

  def __init__(self, config: Any, workdir: str):
    from transformer_jax import checkpoint, compatibility, inference  # orbax: only when training.
    from transformer_jax.training import tasks
    from transformer_jax.training import config as config_lib  # ml_collections: the steps need none
    config_lib.validate_config(config)
    self.is_main, self.workdir = jax.process_index() == 0, Workdir(workdir)
    self.mesh = sharding.create_mesh(config.mesh_shape, config.dcn_mesh_shape or None)
    task = tasks.get_task(config)
    if config.init_from and config.dataset != 'synthetic' and self.is_main:
      self.workdir.adopt_vocabulary(Workdir(config.init_from), config.vocab_path)
    tokenizer, self.train_iter, self.eval_ds = _datasets(config, workdir, self.mesh, task)
    self.model_cfg = config_lib.model_config(
        config, config.vocab_size if tokenizer is None else tokenizer.vocab_size)
    optimizer, schedule = create_optimizer(config, self.model_cfg.d_model)
    vocab = None if tokenizer is None else self.workdir.vocab_path(config.vocab_path)
    if vocab is None:
      metadata = {'model_config': model_config_to_dict(self.model_cfg)}
    else:  # the vocabulary the tokenizer was loaded from
      metadata = compatibility.training_metadata(self.model_cfg, vocab)
    self.ckpt = checkpoint.Checkpointer(
        workdir, save_every_steps=config.save_every_steps, keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
        metadata={**metadata, 'data': config_lib.data_identity(config)})
    state = self.ckpt.restore(abstract_train_state(self.model_cfg, optimizer, self.mesh),
                              self.train_iter)
    # Written only once the checkpoints accepted this config: a refused resume must not
    # leave the workdir describing a model its checkpoints are not.
    if self.is_main:
      self.workdir.write_config(config)
      self.workdir.save_model_config(self.model_cfg)
    self.state = state or create_train_state(self.model_cfg, optimizer, self.mesh, config.seed)
    if state is None and config.init_from:  # fine-tuning: its parameters, fresh optimizer
      params = inference.load_initial_params(config.init_from, self.model_cfg, vocab)
      self.state = self.state.replace(params=jax.device_put(
          params, state_shardings(self.model_cfg, optimizer, self.mesh).params))
      logging.info('starting from the parameters of %s', config.init_from)
    self.train_step = make_train_step(self.model_cfg, config, self.mesh, optimizer, schedule)
    self.eval_step = make_eval_step(self.model_cfg, config, self.mesh, optimizer)
    self.task_eval = tasks.make_evaluator(task, tasks.EvalContext(
        config, self.workdir, self.model_cfg, tokenizer, self.mesh, self.is_main))
    self.writer = metrics_lib.MetricWriter(workdir, enabled=self.is_main)
    self.counts = metrics_lib.param_split(self.state.params)
    self.peak = metrics_lib.peak_flops(jax.devices()[0], config.peak_tflops)
    self.num_eval_batches = config.num_eval_batches


def train_and_evaluate(config: Any, workdir: str) -> TrainState:
  """Train `config` in `workdir` (resuming from its checkpoints); returns the final state.

  Stops at `num_train_steps`, after `train_minutes` of training (evaluation time
  excluded) or on SIGTERM (after a checkpoint), evaluating every
  `eval_every_steps` (or `eval_every_minutes`) and at the end, then averages the
  last checkpoints and evaluates the average. Cadences and budget: `clock.Clock`.
  """
  from transformer_jax import checkpoint, inference
  from transformer_jax.training import distributed
  # SIGTERM from here on (data set-up and restore included) saves and exits 0.
  with distributed.PreemptionGuard() as guard:
    run = _Run(config, workdir)
    state, step = run.state, int(run.state.step)
    clock = Clock(config, run.ckpt.restored_progress)
    log = metrics_lib.TrainLog(run.writer, run.model_cfg, run.counts, run.peak, config, step,
                               clock.train_seconds, run.is_main)
    logging.info('%s parameters (%s non-embedding); starting at step %d',
                 f"{run.counts['total']:,}",
                 f"{run.counts['total'] - run.counts['embedding']:,}", step)
    pending, evaluated = None, set()
    while not clock.done(step) and not guard.should_stop(step):
      batch = stack_micro_batches([next(run.train_iter) for _ in range(config.grad_accum_steps)])
      state, step_metrics = run.train_step(state, sharding.shard_batch(batch, run.mesh))
      step += 1
      if pending is not None:  # the previous step's metrics, read while this one runs
        log.add(*_finish(pending), clock.lap())
      pending = (step, step_metrics, batch)
      eval_due = clock.eval_due(step)
      log_due = eval_due or clock.log_due(step)
      if log_due or clock.save_due(step):  # a checkpoint never holds an unchecked step
        log.add(*_finish(pending), clock.lap())
        pending = None
      run.ckpt.maybe_save(step, state, run.train_iter, progress=clock.progress())
      if log_due:
        log.write(step, clock.commit(), clock.train_seconds)
      if eval_due:
        with clock.paused():
          _evaluate(run, log, 'eval', state.params, step, clock.train_seconds)
        evaluated.add(step)
    if pending is not None:
      log.add(*_finish(pending), clock.lap())
    clock.stop()
    log.close(step, clock.train_seconds)
    run.ckpt.maybe_save(step, state, run.train_iter, force=True, progress=clock.progress())
    run.ckpt.wait()
  if guard.requested:
    logging.warning('preempted: saved step %d, exiting', step)
  else:
    if step not in evaluated:
      _evaluate(run, log, 'eval', state.params, step, clock.train_seconds)
    if config.average_last:
      checkpoint.average_checkpoints(workdir, config.average_last)
      params, _, _ = inference.load_for_inference(workdir)
      _evaluate(run, log, 'eval_averaged', params, step, clock.train_seconds)
  run.ckpt.close()
  run.writer.close()
  return state


def _evaluate(run: _Run, log: metrics_lib.TrainLog, label: str, params: Any, step: int,
              train_seconds: float) -> None:
  """Loss metrics on the eval split, then the task's evaluation; logged as `label/*`."""
  start = time.perf_counter()
  scalars = evaluate(run.eval_step, params, run.eval_ds, run.mesh, run.num_eval_batches)
  if run.task_eval is not None:
    scalars.update(run.task_eval(label, params, step))
  scalars['seconds'] = time.perf_counter() - start
  log.write_eval(step, label, scalars, train_seconds)


def _finish(pending: tuple) -> tuple[dict[str, float], Batch]:
  """Block on a step's metrics and check them -> (metrics, the step's batch)."""
  step, step_metrics, batch = pending
  values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  check_finite(step, values)
  return values, batch
