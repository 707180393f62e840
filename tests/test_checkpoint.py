"""Unit tests of transformer_jax.checkpoint over a hand-made TrainState-like pytree."""

import errno
import glob
import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from transformer_jax import checkpoint as ckpt
from transformer_jax import compatibility, inference, sharding
from transformer_jax.training import distributed
from transformer_jax.workdir import Workdir, WorkdirError


@struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


class FakeIterator:
  """Counts batches; its position is what a checkpoint must bring back."""

  def __init__(self, as_bytes=False):
    self.position, self.as_bytes = 0, as_bytes

  def get_state(self):
    return str(self.position).encode() if self.as_bytes else {'position': self.position}

  def set_state(self, state):
    self.position = int(state) if self.as_bytes else state['position']


@jax.jit  # one compile, not one per small op
def make_state(params, step):
  """A state whose every leaf depends on `step` (params, Adam moments, rng)."""
  tx = optax.adam(1e-3)
  params = jax.tree.map(lambda p: p + step, params)
  opt_state = tx.init(params)
  _, opt_state = tx.update(params, opt_state, params)
  return State(jnp.int32(step), params, opt_state,
               jax.random.key_data(jax.random.fold_in(jax.random.key(0), step)))


def abstract_of(state):
  mesh = sharding.create_mesh()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=sharding.replicated(mesh)), state)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def float64_mean(trees):
  return jax.tree.map(
      lambda *xs: (sum(np.asarray(x, np.float64) for x in xs) / len(xs)).astype(xs[0].dtype),
      *trees)


@pytest.fixture
def metadata(tiny_config, tmp_path):
  vocab = tmp_path / 'spm.model'
  vocab.write_bytes(b'fake sentencepiece model')
  return compatibility.training_metadata(tiny_config, str(vocab))


def save_steps(workdir, params, metadata, steps, every=1, keep=10, iterator=None):
  with ckpt.Checkpointer(workdir, save_every_steps=every, keep=keep, metadata=metadata) as c:
    for step in steps:
      if iterator is not None:
        iterator.position = 100 + step
      c.maybe_save(step, make_state(params, step), iterator,
                   progress={'train_seconds': 10.0 * step})
    return c.all_steps()


@pytest.mark.parametrize('as_bytes', [False, True])
def test_restore_brings_back_state_and_data_position(tmp_path, tiny_params, metadata, as_bytes):
  save_steps(str(tmp_path), tiny_params, metadata, [1, 2, 3], iterator=FakeIterator(as_bytes))
  iterator = FakeIterator(as_bytes)
  expected = make_state(tiny_params, 3)
  c = ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=10, metadata=metadata)
  restored = c.restore(abstract_of(expected), iterator)
  assert_trees_equal(restored, expected)
  assert isinstance(restored.params['decoder']['layer_0']['ffn']['wi']['kernel'], jax.Array)
  assert iterator.position == 103
  assert c.restored_progress == {'train_seconds': 30.0}  # the time budget carries over


def test_no_checkpoint_restores_none(tmp_path, tiny_params, metadata):
  c = ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=1, metadata=metadata)
  assert c.restore(abstract_of(make_state(tiny_params, 0))) is None


def test_saves_every_n_steps_keeps_last_k_and_forced_final(tmp_path, tiny_params, metadata):
  workdir = str(tmp_path)
  with ckpt.Checkpointer(workdir, save_every_steps=2, keep=3, metadata=metadata) as c:
    saved = [s for s in range(1, 12) if c.maybe_save(s, make_state(tiny_params, s))]
    assert c.maybe_save(11, make_state(tiny_params, 11), force=True)
    assert not c.maybe_save(11, make_state(tiny_params, 11), force=True)  # already there.
    c.wait()
    assert saved == [2, 4, 6, 8, 10]
    assert c.all_steps() == [8, 10, 11]
  on_disk = sorted(int(os.path.basename(p)) for p in glob.glob(f'{workdir}/checkpoints/*')
                   if os.path.basename(p).isdigit())
  assert on_disk == [8, 10, 11]


def test_leftover_partial_save_is_ignored_and_cleaned(tmp_path, tiny_params, metadata):
  """What kill -9 during a save leaves behind: a `<step>.orbax-checkpoint-tmp-*` dir."""
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1, 2])
  partial = f'{workdir}/checkpoints/3.orbax-checkpoint-tmp-1234'
  os.makedirs(f'{partial}/state')
  with ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata) as c:
    assert c.all_steps() == [1, 2]
    assert_trees_equal(c.restore(abstract_of(make_state(tiny_params, 0))),
                       make_state(tiny_params, 2))
    assert c.maybe_save(3, make_state(tiny_params, 3))
    c.wait()
    assert not os.path.exists(partial)
    assert c.all_steps() == [1, 2, 3]


def _no_space(monkeypatch, at_step):
  """Make orbax's background save of step `at_step` fail with ENOSPC as it finalizes its
  items (once every array is written: no write is left running, see test_train for one
  failing mid-write)."""
  finalize = ocp.JsonCheckpointHandler.finalize

  def no_space(self, directory):
    if f'/{at_step}.orbax-checkpoint-tmp' in str(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return finalize(self, directory)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, 'finalize', no_space)


def test_a_full_disk_during_a_save_is_one_line_and_a_rerun_resumes_from_the_last_step(
    tmp_path, tiny_params, metadata, monkeypatch):
  workdir = str(tmp_path)
  directory = f'{tmp_path}/checkpoints'
  _no_space(monkeypatch, at_step=2)
  c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata)
  assert c.maybe_save(1, make_state(tiny_params, 1))
  assert c.maybe_save(2, make_state(tiny_params, 2))  # fails in the background
  with pytest.raises(ckpt.CheckpointSaveError) as error:
    c.wait()
  assert str(error.value) == (
      f'cannot write checkpoint step 2 to {directory}/2: no space left on device; the last '
      f'complete checkpoint is step 1 ({directory}/1), where a rerun resumes')
  c.wait()  # reported once
  assert os.path.isdir(f'{directory}/2.orbax-checkpoint-tmp')
  # A rerun resumes from step 1, and the partial step 2 is removed.
  with ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata) as c:
    assert_trees_equal(c.restore(abstract_of(make_state(tiny_params, 0))),
                       make_state(tiny_params, 1))
    assert os.listdir(directory) == ['1']


def test_a_save_the_free_space_cannot_hold_is_refused_before_writing(
    tmp_path, tiny_params, metadata, monkeypatch):
  monkeypatch.setattr(ckpt.shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(
      1 << 30, (1 << 30) - (1 << 19), 1 << 19))
  with ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=10, metadata=metadata) as c:
    with pytest.raises(ckpt.CheckpointSaveError, match=(
        rf'^cannot write checkpoint step 1 to {tmp_path}/checkpoints/1: no space left on '
        r'device \(0.50 MiB free, the checkpoint needs about [0-9.]+ MiB\); no checkpoint is '
        'complete yet$')):
      c.maybe_save(1, make_state(tiny_params, 1))
  assert os.listdir(tmp_path / 'checkpoints') == []


def _largest_array_file(item_dir):
  return max(glob.glob(f'{item_dir}/**/d/*', recursive=True), key=os.path.getsize)


def _flip_bytes(step_dir):
  _flip_bytes_in(f'{step_dir}/state')


def _flip_bytes_in(item_dir):
  path = _largest_array_file(item_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(8)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def _truncate(step_dir):
  path = _largest_array_file(f'{step_dir}/state')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _drop_metadata(step_dir):
  os.remove(f'{step_dir}/metadata/metadata')


@pytest.mark.parametrize('corrupt', [_flip_bytes, _truncate, _drop_metadata])
def test_corrupt_latest_falls_back_with_warning(tmp_path, tiny_params, metadata, caplog, corrupt):
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1, 2], iterator=FakeIterator())
  corrupt(f'{workdir}/checkpoints/2')
  iterator = FakeIterator()
  c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata)
  with caplog.at_level(logging.WARNING):
    restored = c.restore(abstract_of(make_state(tiny_params, 0)), iterator)
  assert_trees_equal(restored, make_state(tiny_params, 1))
  assert iterator.position == 101
  assert any('checkpoints/2' in r.getMessage() and 'older' in r.getMessage()
             for r in caplog.records)
  # The corrupt step is kept aside (not deleted) and no longer blocks saving step 2 again.
  assert c.all_steps() == [1]
  assert len(glob.glob(f'{workdir}/checkpoints_corrupt/2-*')) == 1
  assert c.maybe_save(2, make_state(tiny_params, 2), force=True)
  c.close()


def test_nothing_restorable_raises(tmp_path, tiny_params, metadata):
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1, 2])
  for step in (1, 2):
    _flip_bytes(f'{workdir}/checkpoints/{step}')
  c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata)
  with pytest.raises(ckpt.CheckpointError, match='none of the 2 checkpoints.*checksum'):
    c.restore(abstract_of(make_state(tiny_params, 0)))
  assert c.all_steps() == [1, 2]  # nothing moved when nothing could be verified.


def test_different_model_config_or_vocabulary_is_refused(tmp_path, tiny_params, tiny_config,
                                                           metadata):
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1])
  abstract = abstract_of(make_state(tiny_params, 0))
  other_vocab = tmp_path / 'other.model'
  other_vocab.write_bytes(b'another vocabulary')
  wider = compatibility.training_metadata(tiny_config.replace(d_model=64),
                                          str(tmp_path / 'spm.model'))
  relabelled = compatibility.training_metadata(tiny_config, str(other_vocab))
  for other, message in ((wider, r'model_config\.d_model: checkpoint 32 != now 64'),
                         (relabelled, 'vocab_sha256')):
    c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=other)
    with pytest.raises(ckpt.CheckpointError, match=message) as info:
      c.restore(abstract)
    assert '\n' not in str(info.value)
  # Another optimizer (gradient clipping adds a state) is refused before reading arrays.
  clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  other_state = make_state(tiny_params, 0).replace(opt_state=clipped.init(tiny_params))
  c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=metadata)
  with pytest.raises(ckpt.CheckpointError, match='state arrays only in the checkpoint'):
    c.restore(abstract_of(other_state))
  # How the model runs (remat, attention kernel) may change on resume.
  runtime = compatibility.training_metadata(tiny_config.replace(remat='full', attention_impl='xla'),
                                   str(tmp_path / 'spm.model'))
  c = ckpt.Checkpointer(workdir, save_every_steps=1, keep=10, metadata=runtime)
  assert_trees_equal(c.restore(abstract), make_state(tiny_params, 1))


def test_kernels_of_another_layout_are_refused_in_one_line(tmp_path, tiny_params, metadata):
  """A checkpoint whose kernels have other shapes (transformer_jax < 0.2 saved them
  [in, out]) is refused by name and shapes, on resume and for inference, and kept."""
  def old_layout(path, x):  # [out..., in...] -> [in..., out...]
    if path[-1].key != 'kernel':
      return x
    return np.moveaxis(x, 0, -1) if path[-2].key == 'out' else np.moveaxis(x, -1, 0)
  old_params = jax.tree_util.tree_map_with_path(old_layout, jax.device_get(tiny_params))
  save_steps(str(tmp_path), old_params, metadata, [1])
  c = ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=10, metadata=metadata)
  message = (r'cross_attention/key/kernel has shape \(32, 4, 8\) in the checkpoint, '
             r'\(4, 8, 32\) here')
  for load in (lambda: c.restore(abstract_of(make_state(tiny_params, 0))),
               lambda: inference.load_for_inference(str(tmp_path))):
    with pytest.raises(ckpt.CheckpointError, match=message) as info:
      load()
    assert '\n' not in str(info.value) and '< 0.2 store kernels [in, out]' in str(info.value)
  assert c.all_steps() == [1]


def test_resume_without_saved_data_position_is_refused(tmp_path, tiny_params, metadata):
  save_steps(str(tmp_path), tiny_params, metadata, [1])
  c = ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=10, metadata=metadata)
  with pytest.raises(ckpt.CheckpointError, match='no data-iterator position'):
    c.restore(abstract_of(make_state(tiny_params, 0)), FakeIterator())


def test_data_position_of_another_pipeline_is_refused(tmp_path, tiny_params, metadata):
  save_steps(str(tmp_path), tiny_params, metadata, [1], iterator=FakeIterator())
  c = ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=10, metadata=metadata)
  with pytest.raises(ckpt.CheckpointError, match=r'position in .*/1 does not fit this input '
                                                 r'pipeline \(TypeError: '):
    c.restore(abstract_of(make_state(tiny_params, 0)), FakeIterator(as_bytes=True))
  assert c.all_steps() == [1]  # refused, not quarantined as corrupt


def test_typed_prng_key_is_refused_with_advice(tmp_path, tiny_params, metadata):
  state = make_state(tiny_params, 1).replace(rng=jax.random.key(0))
  with ckpt.Checkpointer(str(tmp_path), save_every_steps=1, keep=1, metadata=metadata) as c:
    with pytest.raises(TypeError, match='rng.*key_data'):
      c.maybe_save(1, state)


def test_average_is_mean_of_last_n_and_used_for_inference(tmp_path, tiny_params, tiny_config,
                                                            metadata, caplog):
  workdir = str(tmp_path)
  Workdir(workdir).save_model_config(tiny_config)
  save_steps(workdir, tiny_params, metadata, [1, 2, 3, 4])
  path = ckpt.average_checkpoints(workdir, 3)
  assert path == os.path.join(workdir, 'averaged')
  expected = float64_mean([make_state(tiny_params, s).params for s in (2, 3, 4)])
  params, cfg, vocab = inference.load_for_inference(workdir)
  assert_trees_equal(params, expected)
  assert cfg == tiny_config
  assert vocab == os.path.join(workdir, 'spm.model')
  # Training went on after averaging: still the average, with a warning.
  save_steps(workdir, tiny_params, metadata, [5])
  with caplog.at_level(logging.WARNING):
    assert_trees_equal(inference.load_for_inference(workdir)[0], expected)
  assert any('step 5 exists' in r.getMessage() for r in caplog.records)
  # A damaged average: the newest readable step, with a warning naming it and the fix first.
  _flip_bytes_in(f'{workdir}/averaged/params')
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert_trees_equal(inference.load_for_inference(workdir)[0],
                       make_state(tiny_params, 5).params)
  assert caplog.records[0].getMessage().startswith(
      f'{workdir}/averaged is unreadable: using the newest readable step instead; rebuild it '
      f'with transformer-jax-average --workdir {workdir} (')
  # ... and without a step to use instead, one short line saying so.
  shutil.rmtree(f'{workdir}/checkpoints')
  with pytest.raises(ckpt.CheckpointError) as error:
    inference.load_for_inference(workdir)
  assert str(error.value).startswith(
      f'{workdir}/averaged is unreadable and there is no checkpoint step to use instead: '
      'restore it, or import the model again (')
  assert len(str(error.value).replace(workdir, 'W')) < 220  # the cause: 100 characters at most
  # A different vocabulary file in the workdir is refused.
  ckpt.write_averaged(workdir, expected, metadata)
  (tmp_path / 'spm.model').write_bytes(b'retrained vocabulary')
  with pytest.raises(ckpt.CheckpointError, match='not the vocabulary'):
    inference.load_for_inference(workdir)


def test_inference_without_average_uses_latest(tmp_path, tiny_params, tiny_config, metadata):
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1, 2])
  params, cfg, _ = inference.load_for_inference(workdir)
  assert_trees_equal(params, make_state(tiny_params, 2).params)
  assert cfg == tiny_config


def test_average_cli(tmp_path, tiny_params, metadata, capsys):
  from transformer_jax.cli import average
  workdir = str(tmp_path)
  save_steps(workdir, tiny_params, metadata, [1, 2])
  assert average.main(['--workdir', workdir, '--num_last', '2']) == 0
  params, _, _ = inference.load_for_inference(workdir)
  assert_trees_equal(params, float64_mean([make_state(tiny_params, s).params for s in (1, 2)]))
  assert average.main(['--workdir', str(tmp_path / 'missing'), '--num_last', '2']) == 2
  err = capsys.readouterr().err
  assert err.startswith('transformer-jax-average: error: ') and 'no checkpoints' in err


def test_model_config_json_round_trip_and_errors(tmp_path, tiny_config):
  cfg = tiny_config.replace(dtype=jnp.bfloat16, d_k=16)
  Workdir(str(tmp_path)).save_model_config(cfg)
  assert json.loads((tmp_path / 'model_config.json').read_text())['dtype'] == 'bfloat16'
  assert Workdir(str(tmp_path)).load_model_config() == cfg
  (tmp_path / 'model_config.json').write_text('{"vocab_size": 40,\n "d_model": }')
  with pytest.raises(WorkdirError, match=r'model_config.json:2: invalid JSON'):
    Workdir(str(tmp_path)).load_model_config()
  (tmp_path / 'model_config.json').write_text('{"vocab_size": 40, "d_modle": 8}')
  with pytest.raises(WorkdirError, match="model_config.json: unknown.*'d_modle'"):
    Workdir(str(tmp_path)).load_model_config()


def test_checksums_see_one_flipped_bit_and_ignore_sharding(tiny_params):
  sums = ckpt.tree_checksums(tiny_params)
  leaf = tiny_params['decoder']['layer_0']['ffn']['wi']['kernel']
  bits = np.asarray(leaf).view(np.uint32).copy()
  bits.flat[7] ^= 1
  changed = dict(tiny_params, decoder=jax.tree.map(lambda x: x, tiny_params['decoder']))
  changed['decoder']['layer_0']['ffn']['wi']['kernel'] = jnp.asarray(bits.view(np.float32))
  other = ckpt.tree_checksums(changed)
  assert [k for k in sums if sums[k] != other[k]] == ['decoder/layer_0/ffn/wi/kernel']
  on_mesh = jax.device_put(tiny_params, sharding.replicated(sharding.create_mesh()))
  assert ckpt.tree_checksums(on_mesh) == sums


def test_preemption_guard_turns_sigterm_into_a_request():
  previous = signal.getsignal(signal.SIGTERM)
  with distributed.PreemptionGuard() as guard:
    assert not guard.requested
    assert not guard.should_stop(3)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested and guard.should_stop(4)
  assert signal.getsignal(signal.SIGTERM) is previous
