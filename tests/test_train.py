"""The training system: loss, schedule, accumulation, determinism, NaN stop, the loop."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax import Transformer, checkpoint, inference, sharding
from transformer_jax.training import optimizer as optimizer_lib, train_lib
from transformer_jax.training import config as config_lib

EPS_LS = 0.1


@pytest.fixture(scope='module')
def mesh():
  return sharding.create_mesh((-1, 1, 1))


def _recipe(**changes):
  config = config_lib.default_config()
  config.warmup_steps = 10
  config.update(changes)
  return config


def _batch(seed, rows, length, vocab=40):
  """Random ids >= 3 with each row padded after a random length (EOS-free; fine here)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key in ('inputs', 'targets'):
    tokens = rng.integers(3, vocab, (rows, length), dtype=np.int32)
    lengths = rng.integers(2, length + 1, (rows, 1))
    out[key] = np.where(np.arange(length) < lengths, tokens, 0).astype(np.int32)
  return out


def _state_and_step(model_cfg, config, mesh, optimizer=None, seed=0):
  schedule = optimizer_lib.learning_rate_schedule(model_cfg.d_model, config.warmup_steps)
  if optimizer is None:
    optimizer, schedule = optimizer_lib.create_optimizer(config, model_cfg.d_model)
  state = train_lib.create_train_state(model_cfg, optimizer, mesh, seed)
  return state, train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)


def _hand_loss(logits, targets, vocab):
  """Label-smoothed cross-entropy per real token, written out: q = (1-ε)·1[y] + ε/V."""
  logp = jax.nn.log_softmax(logits)
  real = targets > 0
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  per_token = -(1 - EPS_LS) * picked - EPS_LS / vocab * jnp.sum(logp, axis=-1)
  return jnp.sum(jnp.where(real, per_token, 0.0)) / jnp.sum(real)


def test_one_step_loss_and_gradients_match_hand_computation(tiny_config, mesh):
  config = _recipe()
  state, step = _state_and_step(tiny_config, config, mesh)
  params = jax.device_get(state.params)
  batch = _batch(0, 4, 9)
  model = Transformer(tiny_config)

  def hand(p):
    logits = model.apply({'params': p}, batch['inputs'], batch['targets'])
    return _hand_loss(logits, jnp.asarray(batch['targets']), tiny_config.vocab_size)

  # Jitted, and compared in NumPy: op-by-op dispatch compiles every small op anew.
  loss, grads = jax.device_get(jax.jit(jax.value_and_grad(hand))(params))
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  metrics = jax.device_get(metrics)
  assert metrics['tokens'] == np.sum(batch['targets'] > 0)
  np.testing.assert_allclose(metrics['loss'] / metrics['tokens'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], jax.jit(optax.tree.norm)(grads), rtol=1e-4)
  # Adam's first update is -lr(1)·g/(|g| + eps): compare where g is not ~0.
  lr = float(optimizer_lib.learning_rate_schedule(tiny_config.d_model, config.warmup_steps)(1))
  np.testing.assert_allclose(metrics['learning_rate'], lr, rtol=1e-6)
  for g, old, new in zip(jax.tree.leaves(grads), jax.tree.leaves(params),
                         jax.tree.leaves(jax.device_get(new_state.params))):
    big = np.abs(g) > 1e-5
    expected = old - lr * g / (np.abs(g) + 1e-9)
    np.testing.assert_allclose(new[big], expected[big], rtol=1e-5, atol=1e-7)


def test_schedule_matches_paper_formula():
  schedule = optimizer_lib.learning_rate_schedule(512, 4000, multiplier=2.0)
  for s in (1, 10, 3999, 4000, 4001, 100_000):
    expected = 2.0 * 512 ** -0.5 * min(s ** -0.5, s * 4000 ** -1.5)
    np.testing.assert_allclose(schedule(s), expected, rtol=1e-6)
  # Linear warm-up, peak at `warmup`, then inverse square root decay.
  assert schedule(2000) < schedule(4000) > schedule(16000)
  np.testing.assert_allclose(schedule(16000), schedule(4000) / 2, rtol=1e-6)
  # An optional cooldown scales the last `cooldown_steps` linearly toward 0.
  cooled = optimizer_lib.learning_rate_schedule(512, 4000, 2.0, cooldown_steps=999,
                                            total_steps=10_000)
  for s in (1, 4000, 9001):
    np.testing.assert_allclose(cooled(s), schedule(s), rtol=1e-6)
  np.testing.assert_allclose(cooled(9501), schedule(9501) / 2, rtol=1e-5)
  np.testing.assert_allclose(cooled(10_000), schedule(10_000) / 1000, rtol=1e-5)
  assert float(cooled(10_001)) == 0.0


@pytest.mark.parametrize('cooldown_steps', [1, 2, 4])
def test_every_update_of_a_cooldown_has_a_positive_decaying_rate(cooldown_steps):
  """Update n (optax counts from 0) uses lr(n + 1): the last of `num_train_steps` updates
  still learns, and each cool-down update has a lower rate than the one before."""
  config = _recipe(warmup_steps=1, num_train_steps=6, cooldown_steps=cooldown_steps)
  optimizer, schedule = optimizer_lib.create_optimizer(config, 512)
  params = {'w': jnp.zeros(())}
  state, rates = optimizer.init(params), []
  for _ in range(config.num_train_steps):  # the rate optax applies: |update| of a unit grad
    updates, state = optimizer.update({'w': jnp.ones(())}, state, params)
    rates.append(float(-updates['w']))
  np.testing.assert_allclose(rates, [schedule(s) for s in range(1, 7)], rtol=1e-5)
  peak = 512 ** -0.5 * 6 ** -0.5  # warm-up of 1 step: inverse square root from step 1
  last = rates[-cooldown_steps - 1:]
  assert all(a > b > 0 for a, b in zip(last, last[1:]))
  np.testing.assert_allclose(rates[-1], peak / (cooldown_steps + 1), rtol=1e-5)


def test_gradient_accumulation_equals_one_larger_batch(tiny_config, mesh):
  sgd = optax.sgd(1.0)
  b1, b2 = _batch(1, 4, 7), _batch(2, 4, 11)  # different lengths and token counts
  assert np.sum(b1['targets'] > 0) != np.sum(b2['targets'] > 0)
  state_k, step_k = _state_and_step(tiny_config, _recipe(grad_accum_steps=2), mesh, sgd)
  state_1, step_1 = _state_and_step(tiny_config, _recipe(grad_accum_steps=1), mesh, sgd)
  stacked = train_lib.stack_micro_batches([b1, b2])
  big = {k: np.concatenate([np.pad(b1[k], ((0, 0), (0, 4))), b2[k]]) for k in b1}
  state_k, metrics_k = step_k(state_k, sharding.shard_batch(stacked, mesh))
  state_1, metrics_1 = step_1(state_1, sharding.shard_batch(big, mesh))
  for key in ('loss', 'tokens', 'grad_norm'):
    np.testing.assert_allclose(metrics_k[key], metrics_1[key], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(state_k.params), jax.device_get(state_1.params))


def test_flattened_adam_takes_the_same_steps(tiny_config, mesh):
  # Losses, not parameters: Adam turns the rounding noise of gradients that are 0 in exact
  # arithmetic (the key biases) into ±lr steps, which change no output.
  batches = [sharding.shard_batch(_batch(0, 4, 9), mesh)] * 4
  runs = []
  for flatten in (False, True):
    state, step = _state_and_step(tiny_config, _recipe(flatten_optimizer=flatten), mesh)
    runs.append([])
    for batch in batches:
      state, metrics = step(state, batch)
      runs[-1].append(float(metrics['loss']))
  assert len(jax.tree.leaves(state.opt_state)) < len(jax.tree.leaves(state.params))
  assert runs[0][-1] < runs[0][0]
  np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6)


def test_same_seed_same_losses(tiny_config, mesh):
  model_cfg = tiny_config.replace(dropout_rate=0.3)  # dropout draws from the state's rng
  batches = [sharding.shard_batch(_batch(i, 4, 9), mesh) for i in range(3)]

  def losses(seed):
    state, step = _state_and_step(model_cfg, _recipe(), mesh, seed=seed)
    out = []
    for batch in batches:
      state, metrics = step(state, batch)
      out.append(float(metrics['loss']))
    return out

  first = losses(0)
  assert losses(0) == first
  assert losses(1) != first


def test_check_finite_names_the_step():
  train_lib.check_finite(3, {'loss': 1.0, 'grad_norm': 2.0})
  with pytest.raises(FloatingPointError, match=r'at step 17 \(loss=nan\)'):
    train_lib.check_finite(17, {'loss': float('nan'), 'grad_norm': 2.0})


def _tiny_training_config(**changes):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                              'tiny.py'))
  config.update(changes)
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """configs/tiny.py trained to its end in a workdir (tests that change it copy it), and
  the step the run returned."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  state = train_lib.train_and_evaluate(_tiny_training_config(), str(workdir))
  return workdir, int(state.step)


@pytest.mark.xdist_group('trained')
def test_training_loop_logs_checkpoints_and_resumes(tmp_path, trained):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  assert trained[1] == 6
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train] == [2, 3, 4, 6]  # every 2 steps, and before evals
  assert all(r['perf/target_tokens_per_s'] > 0 and r['train/learning_rate'] > 0 for r in train)
  assert {r['step'] for r in records if 'eval/loss' in r} == {3, 6}
  assert any('eval_averaged/loss' in r for r in records)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(os.path.join(workdir, 'tensorboard'))
  events.Reload()
  scalars = events.Scalars('train/loss')  # TensorBoard reads what metrics.jsonl holds
  assert [e.step for e in scalars] == [r['step'] for r in train]
  np.testing.assert_allclose([e.value for e in scalars], [r['train/loss'] for r in train],
                             rtol=1e-6)
  # Another model is refused, and the workdir still describes the one its checkpoints hold.
  wider = _tiny_training_config()
  wider.model.d_model = 64
  with pytest.raises(checkpoint.CheckpointError, match=r'model_config\.d_model: checkpoint 32'):
    train_lib.train_and_evaluate(wider, workdir)
  assert inference.load_for_inference(workdir)[1].d_model == 32
  # So is another input pipeline: the saved iterator position would not fit it.
  with pytest.raises(checkpoint.CheckpointError, match=r'data\.batch_size: checkpoint 8 != now 16'):
    train_lib.train_and_evaluate(_tiny_training_config(batch_size=16), workdir)
  # Resuming continues from step 6 rather than starting over; a tiny time interval
  # (eval_every_minutes) evaluates after every step.
  state = train_lib.train_and_evaluate(
      _tiny_training_config(num_train_steps=8, eval_every_minutes=1e-9), workdir)
  assert int(state.step) == 8
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    resumed = [json.loads(line) for line in f][len(records):]
  assert min(r['step'] for r in resumed) == 7
  assert sorted(r['step'] for r in resumed if 'eval/loss' in r) == [7, 8]
  # Training minutes carry over from the checkpoint: the resumed run's clock starts
  # where the first stopped, and a budget already spent trains no further step.
  first_minutes = max(r['train/minutes'] for r in records if 'train/minutes' in r)
  assert min(r['train/minutes'] for r in resumed if 'train/loss' in r) > first_minutes
  state = train_lib.train_and_evaluate(
      _tiny_training_config(num_train_steps=20, train_minutes=first_minutes / 2), workdir)
  assert int(state.step) == 8


def test_nan_loss_stops_training_with_the_step(tmp_path):
  # A checkpoint every step (written synchronously): the step that went non-finite is
  # never among them, so the last checkpoint is one to resume from with a lower rate.
  config = _tiny_training_config(learning_rate_multiplier=1e30, average_last=0,
                                 save_every_steps=1, keep_checkpoints=10,
                                 async_checkpointing=False)
  with pytest.raises(FloatingPointError, match=r'non-finite training metrics at step \d+'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  params, _, _ = inference.load_for_inference(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_sigterm_during_set_up_saves_and_returns(tmp_path, monkeypatch):
  """A preemption notice before the first step (here: while the data is set up) is not a
  kill: the run saves its starting point and returns, as it does mid-training."""
  datasets = train_lib._datasets

  def preempted_while_loading(*args):
    out = datasets(*args)
    os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(train_lib, '_datasets', preempted_while_loading)
  state = train_lib.train_and_evaluate(_tiny_training_config(), str(tmp_path))
  assert int(state.step) == 0
  assert os.listdir(tmp_path / 'checkpoints') == ['0']
  metrics = tmp_path / 'metrics.jsonl'
  assert 'eval/loss' not in (metrics.read_text() if metrics.exists() else '')  # no evaluation


@pytest.mark.xdist_group('trained')
def test_fine_tuning_starts_from_the_given_parameters_with_a_fresh_optimizer(tmp_path, trained):
  base, tuned = str(trained[0]), str(tmp_path / 'tuned')
  start, _, _ = inference.load_for_inference(base)  # what translate would use
  # No steps: the new run's state is exactly its starting point.
  state = train_lib.train_and_evaluate(
      _tiny_training_config(init_from=base, num_train_steps=0, average_last=0), tuned)
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), start)
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))
  # Training continues from there (step counter from 0) and moves away from it.
  state = train_lib.train_and_evaluate(
      _tiny_training_config(init_from=base, num_train_steps=2, average_last=0), tuned)
  assert int(state.step) == 2
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                       jax.device_get(state.params), start)
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.xdist_group('trained')
def test_fine_tuning_refuses_another_model_or_vocabulary(tmp_path, trained):
  base = str(tmp_path / 'base')
  shutil.copytree(trained[0], base)
  wider = _tiny_training_config(init_from=base)
  wider.model.d_ff = 128
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'config.init_from: the model differs \(d_ff: .* has 64, this run 128'):
    train_lib.train_and_evaluate(wider, str(tmp_path / 'wider'))
  (tmp_path / 'base' / 'spm.model').write_bytes(b'their vocabulary')
  (tmp_path / 'mine.model').write_bytes(b'another vocabulary')
  cfg = inference.load_for_inference(base)[1]
  with pytest.raises(checkpoint.CheckpointError, match=r'not this run\'s vocabulary .*mine'):
    inference.load_initial_params(base, cfg, str(tmp_path / 'mine.model'))
  assert inference.load_initial_params(base, cfg, str(tmp_path / 'base' / 'spm.model'))


NO_SPACE_AT_STEP_6 = """
import errno, os, sys
import orbax.checkpoint as ocp
write = ocp.JsonCheckpointHandler._save_fn

async def save_fn(self, x, directory):  # orbax's writer thread finds the disk full
  if '/6.orbax-checkpoint-tmp' in str(directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
  return await write(self, x, directory)
ocp.JsonCheckpointHandler._save_fn = save_fn
from transformer_jax.cli import train
sys.argv = ['train', '--config=configs/tiny.py', '--workdir=' + sys.argv[1],
            '--config.average_last=0']
train.run()
"""


def test_train_cli_reports_a_failed_save_in_one_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=os.path.join(root, '.jax_cache'))
  result = subprocess.run([sys.executable, '-c', NO_SPACE_AT_STEP_6, str(tmp_path)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
  directory = tmp_path / 'checkpoints'
  log = tmp_path / 'train.log'
  message = (f'cannot write checkpoint step 6 to {directory}/6: no space left on device; the '
             f'last complete checkpoint is step 3 ({directory}/3), where a rerun resumes; '
             f'what follows is in {log}')
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1] == f'transformer-jax-train: error: {message}', (
      result.stderr[-3000:])
  assert 'Traceback' not in result.stderr and result.stderr.lower().count('no space') == 1
  # Nothing is discarded: the workdir's log has the whole story, the writer's failure too.
  text = log.read_text(encoding='utf-8')
  assert 'Step 6' in text or 'step 6' in text
  assert text.count('No space left on device') >= 1, text[-3000:]
