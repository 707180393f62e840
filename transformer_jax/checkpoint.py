"""Checkpoints and fault tolerance (orbax): save, resume, preemption, averaging.

A step lives in `<workdir>/checkpoints/<step>/` with three orbax items: `state`
(the TrainState pytree, sharded arrays), `data` (each process's input-iterator
position as JSON, `process_<i>.json`) and `metadata` (JSON: model config,
vocabulary hash, one checksum per array). Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it once every item is committed, so a
step directory is complete or absent. Restoring verifies the metadata against the
current run (config / vocabulary mismatch -> CheckpointError) and the checksums
(a corrupt step -> warning, fall back to the previous one). A save that cannot be written
(e.g. no space left) is one CheckpointSaveError naming the step, the path, the cause and
the last complete checkpoint; a partial `<step>.orbax-checkpoint-tmp` is removed on resume.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn
from jax.experimental import multihost_utils

from transformer_jax.model import Transformer, TransformerConfig

PyTree = Any
_DTYPE_FIELDS = ('dtype', 'param_dtype')
# Model-config fields that change how the model runs, not what its weights mean.
_RUNTIME_FIELDS = frozenset({'attention_impl', 'remat'})


class CheckpointError(ValueError):
  """A checkpoint cannot be used: incompatible with this run, or none is readable."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written (e.g. the disk is full); earlier ones are intact."""


# ------------------------------------------------------------------ model config + vocab


def model_config_to_dict(cfg: TransformerConfig) -> dict[str, Any]:
  """TransformerConfig -> JSON-able dict (dtypes as names, e.g. 'bfloat16')."""
  values = dataclasses.asdict(cfg)
  for key in _DTYPE_FIELDS:
    values[key] = jnp.dtype(values[key]).name
  return values


def model_config_from_dict(values: Mapping[str, Any],
                           source: str = 'model config') -> TransformerConfig:
  """Inverse of `model_config_to_dict`; `source` names the origin in error messages."""
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise CheckpointError(f'{source}: unknown TransformerConfig key(s) {unknown}')
  values = dict(values)
  for key in _DTYPE_FIELDS:
    if key in values:
      try:
        values[key] = getattr(jnp, jnp.dtype(values[key]).name)
      except TypeError:
        raise CheckpointError(f'{source}: {key}={values[key]!r} is not a dtype name') from None
  try:
    return TransformerConfig(**values)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: {e}') from None


def save_model_config(workdir: str, cfg: TransformerConfig) -> str:
  """Write `<workdir>/model_config.json` (atomically); returns its path."""
  path = os.path.join(workdir, 'model_config.json')
  _write_json_atomic(path, model_config_to_dict(cfg))
  return path


def load_model_config(workdir: str) -> TransformerConfig:
  """Read `<workdir>/model_config.json`."""
  path = os.path.join(workdir, 'model_config.json')
  return model_config_from_dict(_read_json(path), source=path)


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes (used for the vocabulary)."""
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read ({e.strerror})') from None
  return digest.hexdigest()


def training_metadata(cfg: TransformerConfig, vocab_path: str) -> dict[str, Any]:
  """The `metadata` a training run passes to `Checkpointer`: model config + vocabulary hash."""
  return {'model_config': model_config_to_dict(cfg), 'vocab_sha256': file_sha256(vocab_path)}


def vocab_path_for(workdir: str) -> str:
  """The vocabulary of a run: `vocab_path` of `<workdir>/config.json` if set, else spm.model."""
  config_path = os.path.join(workdir, 'config.json')
  vocab = _read_json(config_path).get('vocab_path') if os.path.exists(config_path) else None
  return vocab or os.path.join(workdir, 'spm.model')


# ------------------------------------------------------------------------------ checksums


def _path_name(path: Sequence[Any]) -> str:
  return '/'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k)))) for k in path)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """uint32 sum over elements of bits_i * (2i + 1) mod 2^32, i = row-major index.

  The index comes from per-axis iotas (no reshape), so a sharded array is summed
  where it lies and only the partial sums are communicated.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
  index, stride = jnp.zeros(x.shape, jnp.uint32), 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * np.uint32(stride % 2**32)
    stride *= x.shape[axis]
  return jnp.sum(bits.astype(jnp.uint32) * (index * 2 + 1), dtype=jnp.uint32)


@jax.jit
def _leaf_checksums(leaves: list[jax.Array]) -> jax.Array:
  """[num_leaves] uint32 checksums (`_leaf_checksum`) of the raw bits of each leaf."""
  return jnp.stack([_leaf_checksum(jnp.asarray(x)) for x in leaves])


def tree_checksums(tree: PyTree) -> dict[str, int]:
  """{'params/encoder/.../kernel': checksum} of the exact bits of every array leaf.

  Any change of one array element changes its checksum; values depend only on the
  global array, not on how it is sharded.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in flat:
    if jax.dtypes.issubdtype(getattr(leaf, 'dtype', None), jax.dtypes.prng_key):
      raise CheckpointError(f'state leaf {_path_name(path)} is a typed PRNG key; store '
                            'jax.random.key_data(key) in the train state instead')
  sums = np.asarray(_leaf_checksums([leaf for _, leaf in flat])) if flat else []
  return {_path_name(path): int(s) for (path, _), s in zip(flat, sums)}


def _verify_checksums(tree: PyTree, expected: Mapping[str, int], where: str) -> None:
  actual = tree_checksums(tree)
  bad = [k for k, v in actual.items() if k in expected and expected[k] != v]
  missing = [k for k in actual if k not in expected]
  if bad or missing:
    raise _CorruptError(f'{where}: checksum mismatch for {(bad + missing)[:3]} '
                        f'({len(bad)} differ, {len(missing)} unknown)')


class _CorruptError(Exception):
  """A step whose bytes do not match what was saved."""


# ------------------------------------------------------------------------------- helpers


def _describe(error: BaseException) -> str:
  """'TypeName: first line of the message' (at most 300 characters), for one-line errors."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


def _save_cause(error: BaseException) -> str:
  """'no space left on device' (or 'disk quota exceeded') if that is behind `error` (an
  OSError's errno, or the message of tensorstore's error), else `_describe` of it."""
  seen = error
  while seen is not None:
    for code in (errno.ENOSPC, errno.EDQUOT):
      if getattr(seen, 'errno', None) == code or os.strerror(code) in str(seen):
        return os.strerror(code).lower()
    seen = seen.__cause__ or seen.__context__
  return _describe(error)


def _bytes_to_write(tree: PyTree) -> int:
  """Bytes of the arrays of `tree` that this process writes (its replica-0 shards)."""
  return sum(sum(s.data.nbytes for s in x.addressable_shards if s.replica_id == 0)
             if isinstance(x, jax.Array) else np.asarray(x).nbytes
             for x in jax.tree.leaves(tree))


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path}:{e.lineno}: invalid JSON ({e.msg})') from None
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read ({e.strerror})') from None


def _write_json_atomic(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _canonical(value: Any) -> Any:
  """JSON round trip: tuples -> lists, so values compare like their saved form."""
  return json.loads(json.dumps(value))


def _mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """'key: checkpoint X != now Y' for every key both have and disagree on (one level deep).

  `attention_impl` and `remat` may change between runs.
  """
  diffs = []
  for key, now in _canonical(dict(current)).items():
    if key == 'checksums' or key not in saved or saved[key] == now:
      continue
    if isinstance(now, dict) and isinstance(saved[key], dict):
      diffs += [f'{key}.{k}: checkpoint {saved[key].get(k)!r} != now {now.get(k)!r}'
                for k in sorted(set(now) | set(saved[key]))
                if k not in _RUNTIME_FIELDS and saved[key].get(k) != now.get(k)]
    else:
      diffs.append(f'{key}: checkpoint {saved[key]!r} != now {now!r}')
  return diffs


def _structure_mismatch(saved: Mapping[str, Any], abstract_state: PyTree) -> list[str]:
  """Arrays the checkpoint has and the state lacks or vice versa (e.g. another optimizer)."""
  if 'checksums' not in saved:
    return []
  paths = {_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  missing, extra = sorted(set(saved['checksums']) - paths), sorted(paths - set(saved['checksums']))
  return ([f'state arrays only in the checkpoint: {missing[:3]}'] if missing else []) + (
      [f'state arrays not in the checkpoint: {extra[:3]}'] if extra else [])


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  return {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_mismatch(saved: PyTree, expected: PyTree) -> list[str]:
  """Arrays (leaves with `.shape`: arrays, orbax metadata, ShapeDtypeStructs) that the
  checkpoint has with another shape than expected, or lacks; e.g. kernels saved [in, out]
  by transformer_jax < 0.2, which now stores them [out, in]."""
  have, want = _shapes(saved), _shapes(expected)
  differ = [name for name in sorted(have.keys() & want.keys()) if have[name] != want[name]]
  diffs = [f'{name} has shape {have[name]} in the checkpoint, {want[name]} here'
           for name in differ[:2]]
  diffs += [f'{len(differ) - 2} more arrays differ in shape'] if len(differ) > 2 else []
  missing = sorted(want.keys() - have.keys())
  diffs += [f'arrays not in the checkpoint: {missing[:3]}'] if missing else []
  if any(name.endswith('kernel') for name in differ):
    diffs.append('checkpoints of transformer_jax < 0.2 store kernels [in, out]')
  return diffs


def _encode_data_state(state: Any) -> dict[str, Any]:
  if isinstance(state, (bytes, bytearray)):
    return {'bytes_b64': base64.b64encode(bytes(state)).decode('ascii')}
  return {'json': state}


def _decode_data_state(saved: Mapping[str, Any]) -> Any:
  if 'bytes_b64' in saved:
    return base64.b64decode(saved['bytes_b64'])
  return saved['json']


def _numpy_abstract(metadata_tree: PyTree) -> PyTree:
  """Orbax array metadata -> ShapeDtypeStructs without sharding (restored as numpy)."""
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata_tree)


def _as_numpy_args(abstract: PyTree) -> ocp.args.PyTreeRestore:
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  return ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)


def _manager(directory: str, *, create: bool, **options: Any) -> ocp.CheckpointManager:
  """Manager over `directory` with the three items' handlers; readers pass create=False."""
  if not create and not os.path.isdir(directory):
    raise CheckpointError(f'no checkpoints: {directory} does not exist')
  data_handler = ocp.JsonCheckpointHandler(
      filename=f'process_{jax.process_index()}.json',
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None))
  # Uncompressed: zstd saves ~8% of the bytes of float weights but costs ~5x the CPU time.
  handlers = {'state': ocp.PyTreeCheckpointHandler(use_compression=False), 'data': data_handler,
              'metadata': ocp.JsonCheckpointHandler()}
  opts = ocp.CheckpointManagerOptions(create=create, **options)
  return ocp.CheckpointManager(directory, options=opts, item_handlers=handlers)


def _read_step_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  restored = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  return restored.metadata


def _restore_params(manager: ocp.CheckpointManager, step: int) -> tuple[PyTree, dict]:
  """Params of one step as numpy arrays, checksum-verified, and the step's metadata."""
  metadata = _read_step_metadata(manager, step)
  saved_tree = manager.item_metadata(step)['state'].tree
  abstract = {'params': _numpy_abstract(saved_tree['params'])}
  restored = manager.restore(step, args=ocp.args.Composite(state=_as_numpy_args(abstract)))
  where = f'{manager.directory}/{step}'
  _verify_checksums(restored.state, metadata.get('checksums', {}), where)
  return restored.state['params'], metadata


# --------------------------------------------------------------------------- Checkpointer


class Checkpointer:
  """Saves the train state every `save_every_steps` steps (async), keeps the last `keep`.

  `metadata` (e.g. `training_metadata(cfg, vocab_path)`) is stored with every step
  and must match on restore. A data iterator passed to `maybe_save`/`restore`
  needs `get_state() -> JSON-able or bytes` and `set_state(state)`. `progress`, a
  small JSON-able dict given to `maybe_save` (e.g. the training seconds spent), comes
  back in `restored_progress` after `restore` ({} when none was saved).
  """

  def __init__(self, workdir: str, *, save_every_steps: int, keep: int, async_save: bool = True,
               metadata: Optional[Mapping[str, Any]] = None):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._metadata = _canonical(dict(metadata or {}))
    self.restored_progress: dict[str, Any] = {}
    self._writing: Optional[int] = None  # the step of the save in flight
    self._manager = _manager(
        self.directory, create=True, max_to_keep=keep,
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        enable_should_save_is_saving_in_progress_check=False)

  @property
  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def maybe_save(self, step: int, state: PyTree, data_iterator: Any = None,
                 force: bool = False, progress: Optional[Mapping[str, Any]] = None) -> bool:
    """Start saving `state` as `step` if due (or `force`); True if a save started.

    The iterator position is read now, synchronously; arrays are copied to host
    before returning, the write finishes in the background. CheckpointSaveError if the
    previous save failed, or if the disk has less free space than the arrays need.
    """
    step = int(step)
    if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
      return False
    self.wait()  # orbax would wait too; a failure is reported as the earlier step's
    needed, free = _bytes_to_write(state), shutil.disk_usage(self.directory).free
    if free < needed * 1.1:  # + orbax's index and metadata
      raise CheckpointSaveError(self._save_failure(
          step, f'no space left on device ({free / 2**20:.2f} MiB free, the checkpoint '
          f'needs about {needed * 1.1 / 2**20:.2f} MiB)'))
    data = {'position': None if data_iterator is None
            else _encode_data_state(data_iterator.get_state()),
            'progress': dict(progress or {})}
    metadata = dict(self._metadata, step=step, checksums=tree_checksums(state))
    self._writing = step
    with self._reporting_save_errors():
      return self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data),
          metadata=ocp.args.JsonSave(metadata)))

  @contextlib.contextmanager
  def _reporting_save_errors(self):
    """Turn a failure of the save in flight (orbax's writer threads) into one
    CheckpointSaveError line."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - any writer failure: the save did not happen.
      step, self._writing = self._writing, None
      if step is None:
        raise
      raise CheckpointSaveError(self._save_failure(step, _save_cause(e))) from None

  def _save_failure(self, step: int, cause: str) -> str:
    """One line: the step and path being written, the cause, the last complete step."""
    done = [s for s in _step_dirs(self.directory) if s != step]
    last = (f'the last complete checkpoint is step {max(done)} '
            f'({self.directory}/{max(done)}), where a rerun resumes'
            if done else 'no checkpoint is complete yet')
    return (f'cannot write checkpoint step {step} to {self.directory}/{step}: '
            f'{cause}; {last}')

  def restore(self, abstract_state: PyTree, data_iterator: Any = None) -> Optional[PyTree]:
    """The latest readable checkpoint as a pytree shaped (and sharded) like `abstract_state`.

    `abstract_state` leaves are `jax.ShapeDtypeStruct`s whose `.sharding` says where
    restored arrays go (any mesh). Returns None if there is no checkpoint at all.
    A corrupt step is skipped with a warning (and moved to `checkpoints_corrupt/`
    once an older one restores); raises CheckpointError if the metadata disagrees
    with this run's or no step can be restored.
    """
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    errors = []
    for step in steps:
      where = f'{self.directory}/{step}'
      try:
        saved = _read_step_metadata(self._manager, step)
      except Exception as e:  # noqa: BLE001 - unreadable metadata = corrupt step.
        errors.append((step, f'{where}: unreadable metadata ({_describe(e)})'))
        logging.warning('checkpoint %s is unreadable, trying an older one: %s', where,
                        _describe(e))
        continue
      diffs = _mismatch(saved, self._metadata) + _structure_mismatch(saved, abstract_state)
      if not diffs:
        try:
          diffs = _shape_mismatch(self._manager.item_metadata(step)['state'].tree,
                                  abstract_state)
        except Exception as e:  # noqa: BLE001 - unreadable array metadata = corrupt step.
          errors.append((step, f'{where}: unreadable array metadata ({_describe(e)})'))
          logging.warning('checkpoint %s is unreadable, trying an older one: %s', where,
                          _describe(e))
          continue
      if diffs:
        raise CheckpointError(f'{where} was saved by a different run ({"; ".join(diffs[:5])}); '
                              'use a new --workdir or restore the original config/vocabulary')
      try:
        state, data = self._restore_step(step, abstract_state, saved, where)
      except Exception as e:  # noqa: BLE001 - any read/verify failure = corrupt step.
        errors.append((step, f'{where}: {_describe(e)}'))
        logging.warning('checkpoint %s is corrupt or partial, trying an older one: %s', where,
                        errors[-1][1])
        continue
      position, self.restored_progress = data['position'], dict(data.get('progress') or {})
      if data_iterator is not None:
        if position is None:
          raise CheckpointError(f'{where} has no data-iterator position (saved without '
                                'data_iterator); resuming would replay the data from the start')
        try:
          data_iterator.set_state(_decode_data_state(position))
        except Exception as e:  # noqa: BLE001 - e.g. tf.data state of another pipeline.
          raise CheckpointError(
              f'the data-iterator position in {where} does not fit this input pipeline '
              f'({_describe(e)}); resume with the data config it was saved with, or use a '
              'new --workdir') from None
      self._quarantine([s for s, _ in errors])
      return state
    raise CheckpointError(f'none of the {len(steps)} checkpoints in {self.directory} could be '
                          f'restored (newest error: {errors[0][1]})')

  def _restore_step(self, step: int, abstract_state: PyTree, saved: Mapping[str, Any],
                    where: str) -> tuple[PyTree, dict[str, Any]]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_state,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
        data=ocp.args.JsonRestore()))
    _verify_checksums(restored.state, saved.get('checksums', {}), where)
    return restored.state, restored.data

  def _quarantine(self, steps: Sequence[int]) -> None:
    """Move corrupt steps newer than the restored one out of the way (never delete them)."""
    if not steps:
      return
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory), 'checkpoints_corrupt')
      os.makedirs(target, exist_ok=True)
      for step in steps:
        dest = os.path.join(target, f'{step}-{int(time.time())}')
        shutil.move(os.path.join(self.directory, str(step)), dest)
        logging.warning('moved corrupt checkpoint step %d to %s', step, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint_quarantine')
    self._manager.reload()

  def is_saving(self) -> bool:
    """True while an asynchronous save is still being written."""
    return self._manager.is_saving_in_progress()

  def wait(self) -> None:
    """Block until the pending asynchronous save (if any) is committed;
    CheckpointSaveError if it failed."""
    with self._reporting_save_errors():
      self._manager.wait_until_finished()
    self._writing = None

  def close(self) -> None:
    """Wait for pending saves and release the manager."""
    with self._reporting_save_errors():
      self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


# ---------------------------------------------------------------------------- preemption


class PreemptionGuard:
  """Context manager: a preemption notice becomes a request to save and stop.

  One process: SIGTERM (and `signals`) set `.requested` instead of killing the
  process; previous handlers come back on exit. Several processes
  (`jax.distributed`): JAX's preemption service receives the notice and
  `should_stop(step)` turns True on every process at the same step, so all of
  them save that step together. The loop calls `should_stop(step)` after each
  step, then force-saves and returns.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous: dict[int, Any] = {}
    self.requested = False

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning('received %s: saving a checkpoint, then exiting',
                    signal.Signals(signum).name)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """True once a preemption was noticed (on all processes at the same `step`)."""
    if not self.requested and jax.process_count() > 1:
      try:
        self.requested = multihost_utils.reached_preemption_sync_point(int(step))
      except RuntimeError:  # the preemption service is disabled.
        pass
    return self.requested

  def __enter__(self) -> 'PreemptionGuard':
    if jax.process_count() == 1:
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


# ---------------------------------------------------------------- averaging and inference


def average_checkpoints(workdir: str, num_last: int) -> str:
  """Average the params of the last `num_last` checkpoints into `<workdir>/averaged`.

  Means are taken in float64 and cast back to each parameter's dtype. Returns the
  path. Inputs are checksum-verified and must share model config and vocabulary.
  """
  if num_last < 1:
    raise CheckpointError(f'num_last must be >= 1, got {num_last}')
  manager = _manager(os.path.join(os.path.abspath(workdir), 'checkpoints'), create=False)
  steps = sorted(manager.all_steps())[-num_last:]
  if not steps:
    raise CheckpointError(f'no checkpoints to average in {manager.directory}')
  if len(steps) < num_last:
    logging.warning('averaging only %d checkpoints (%s), fewer than the %d asked for',
                    len(steps), steps, num_last)
  total, reference = None, None
  for step in steps:
    try:
      params, metadata = _restore_params(manager, step)
    except _CorruptError as e:
      raise CheckpointError(str(e)) from None
    if reference is None:
      reference = metadata
    elif diffs := _mismatch(metadata, {k: reference[k] for k in ('model_config', 'vocab_sha256')
                                       if k in reference}):
      raise CheckpointError(f'{manager.directory}/{step} differs from step {steps[0]}: {diffs[0]}')
    as_float64 = jax.tree.map(lambda x: x.astype(np.float64), params)
    total = as_float64 if total is None else jax.tree.map(np.add, total, as_float64)
  averaged = jax.tree.map(lambda t, p: (t / len(steps)).astype(p.dtype), total, params)
  metadata = {k: v for k, v in reference.items() if k not in ('checksums', 'step')}
  metadata.update(averaged_steps=steps, checksums=tree_checksums({'params': averaged}))
  path = os.path.join(os.path.abspath(workdir), 'averaged')
  with _averaged_checkpointer() as ckptr:
    ckptr.save(path, force=True, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(averaged), metadata=ocp.args.JsonSave(metadata)))
  return path


def _averaged_checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      params=ocp.PyTreeCheckpointHandler(use_compression=False),
      metadata=ocp.JsonCheckpointHandler()))


def _load_averaged(path: str) -> tuple[PyTree, dict]:
  """Params (numpy) and metadata of an `average_checkpoints` output, checksum-verified."""
  try:
    with _averaged_checkpointer() as ckptr:
      metadata = ckptr.restore(path, args=ocp.args.Composite(
          metadata=ocp.args.JsonRestore())).metadata
      abstract = _numpy_abstract(ckptr.metadata(path).item_metadata['params'].tree)
      params = ckptr.restore(path, args=ocp.args.Composite(
          params=_as_numpy_args(abstract))).params
    _verify_checksums({'params': params}, metadata.get('checksums', {}), path)
  except Exception as e:  # noqa: BLE001 - unreadable or corrupt: say how to fix it.
    raise CheckpointError(f'{path} is unreadable ({_describe(e)}); re-run average_checkpoints'
                          ) from None
  return params, metadata


def _step_dirs(directory: str) -> list[int]:
  """Steps with a finalized directory under `directory` (none if it does not exist)."""
  return [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []


def _load_latest(directory: str) -> tuple[PyTree, dict, str]:
  """Params, metadata and path of the newest readable step (older ones on corruption)."""
  manager = _manager(directory, create=False)
  for step in sorted(manager.all_steps(), reverse=True):
    where = f'{manager.directory}/{step}'
    try:
      return (*_restore_params(manager, step), where)
    except Exception as e:  # noqa: BLE001 - corrupt step: try the previous one.
      logging.warning('checkpoint %s is corrupt or partial, trying an older one: %s', where,
                      _describe(e))
  raise CheckpointError(f'no readable checkpoint in {manager.directory}')


def load_for_inference(workdir: str) -> tuple[PyTree, TransformerConfig, str]:
  """(params as numpy arrays, TransformerConfig, vocabulary path) of a training workdir.

  Uses `<workdir>/averaged` if present (warning if newer checkpoints exist), else
  the latest readable checkpoint. The model config comes from the checkpoint;
  `model_config.json` and the vocabulary file must agree with it.
  """
  workdir = os.path.abspath(workdir)
  averaged, checkpoints = os.path.join(workdir, 'averaged'), os.path.join(workdir, 'checkpoints')
  if os.path.isdir(averaged):
    params, metadata = _load_averaged(averaged)
    where, steps = averaged, metadata.get('averaged_steps', [])
    newest = max(_step_dirs(checkpoints), default=None)
    logging.info('using the average of steps %s from %s', steps, averaged)
    if newest is not None and steps and newest > max(steps):
      logging.warning('%s averages steps %s but step %d exists; re-run average_checkpoints '
                      'to use the newer ones', averaged, steps, newest)
  else:
    params, metadata, where = _load_latest(checkpoints)
    logging.info('no averaged checkpoint; using %s', where)
  config_path = os.path.join(workdir, 'model_config.json')
  if 'model_config' in metadata:
    cfg = model_config_from_dict(metadata['model_config'], source=f'{where} metadata')
    if os.path.exists(config_path) and (diffs := _mismatch(
        metadata, {'model_config': _read_json(config_path)})):
      raise CheckpointError(f'{config_path} disagrees with {where}: {diffs[0]}')
  else:
    cfg = load_model_config(workdir)
  ones = jnp.ones((1, 1), jnp.int32)
  expected = jax.eval_shape(lambda: nn.meta.unbox(
      Transformer(cfg).init(jax.random.key(0), ones, ones)['params']))
  if diffs := _shape_mismatch(params, expected):
    raise CheckpointError(f'{where} does not fit the model of its config: {"; ".join(diffs)}')
  vocab_path = vocab_path_for(workdir)
  if 'vocab_sha256' in metadata and file_sha256(vocab_path) != metadata['vocab_sha256']:
    raise CheckpointError(f'{vocab_path} is not the vocabulary {where} was trained with '
                          '(SHA-256 differs)')
  return params, cfg, vocab_path


# Model-config fields a fine-tuning run may change: how it trains, not what the weights mean.
_FINE_TUNING_FIELDS = _RUNTIME_FIELDS | {'dropout_rate', 'attention_dropout_rate', 'dtype'}


def load_initial_params(init_from: str, cfg: TransformerConfig,
                        vocab_path: Optional[str]) -> PyTree:
  """Params (numpy) of the training workdir `init_from` to start a fine-tuning run with.

  Raises CheckpointError (naming `init_from`) if its model differs from `cfg` in any field
  but dropout, compute dtype and runtime options, or if `vocab_path` (None: no vocabulary,
  synthetic data) is not the vocabulary it was trained with.
  """
  if not os.path.isdir(init_from):
    raise CheckpointError(f'config.init_from: {init_from} is not a directory')
  params, theirs, their_vocab = load_for_inference(init_from)
  mine, other = model_config_to_dict(cfg), model_config_to_dict(theirs)
  diffs = [f'{key}: {init_from} has {other[key]!r}, this run {mine[key]!r}' for key in mine
           if key not in _FINE_TUNING_FIELDS and mine[key] != other[key]]
  if diffs:
    raise CheckpointError(f'config.init_from: the model differs ({"; ".join(diffs[:3])})')
  if vocab_path is not None and file_sha256(vocab_path) != file_sha256(their_vocab):
    raise CheckpointError(f'config.init_from: {init_from} was trained with {their_vocab}, '
                          f'not this run\'s vocabulary {vocab_path} (SHA-256 differs); leave '
                          'config.vocab_path empty to use its vocabulary')
  return params


def adopt_vocabulary(init_from: str, vocab_path: str) -> None:
  """Copy the vocabulary of the workdir `init_from` to `vocab_path` unless one is there."""
  if not os.path.exists(vocab_path):
    source = vocab_path_for(init_from)
    os.makedirs(os.path.dirname(vocab_path) or '.', exist_ok=True)
    shutil.copyfile(source, f'{vocab_path}.tmp-{os.getpid()}')
    os.replace(f'{vocab_path}.tmp-{os.getpid()}', vocab_path)
