"""Checkpoints (orbax): save, resume with one corrupt-step fallback, averaging.

A step lives in `<workdir>/checkpoints/<step>/` with three orbax items: `state`
(the TrainState pytree, sharded arrays), `data` (each process's input-iterator
position as JSON, `process_<i>.json`) and `metadata` (JSON: model config,
vocabulary hash, one checksum per array). Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it once every item is committed, so a
step directory is complete or absent. Restoring verifies the metadata against the
current run (config / vocabulary mismatch -> CheckpointError) and the checksums
(a corrupt step -> warning, fall back to the previous one: `newest_readable`, for
resuming and for inference alike). A save that cannot be written (e.g. no space left) is
one CheckpointSaveError naming the step, the path, the cause and the last complete
checkpoint; a partial `<step>.orbax-checkpoint-tmp` is removed on resume. Paths come from
`workdir.Workdir`; checksums from `checksums`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from transformer_jax.compatibility import canonical, mismatch, shape_mismatch, structure_mismatch
from transformer_jax.checksums import CorruptError, tree_checksums, verify_checksums
from transformer_jax.workdir import Workdir, WorkdirError

PyTree = Any
T = TypeVar('T')


class CheckpointError(WorkdirError):
  """A checkpoint cannot be used: incompatible with this run, or unreadable."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written (e.g. the disk is full); earlier ones are intact.
  `log_path`: the workdir's log, for what the abandoned writes still print (`cli.run_main`)."""

  def __init__(self, message: str, log_path: Optional[str] = None):
    super().__init__(message)
    self.log_path = log_path


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
  verify_checksums(restored.state, metadata.get('checksums', {}), where)
  return restored.state['params'], metadata


def newest_readable(manager: ocp.CheckpointManager,
                    read: Callable[[int, str], T]) -> tuple[T, str, list[int]]:
  """The one corrupt-step fallback (resume and inference): `read(step, where)` of the newest
  step it succeeds on -> (its value, where, the newer steps it skipped as corrupt).

  A CheckpointError from `read` (an incompatible checkpoint) ends the search; any other
  error marks the step corrupt: a warning, then the next older step. CheckpointError if
  no step is readable.
  """
  steps, errors = sorted(manager.all_steps(), reverse=True), []
  for step in steps:
    where = f'{manager.directory}/{step}'
    try:
      return read(step, where), where, [s for s, _ in errors]
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - any read/verify failure = corrupt step.
      errors.append((step, f'{where}: {_describe(e)}'))
      logging.warning('checkpoint %s is corrupt or partial, trying an older one: %s', where,
                      errors[-1][1])
  newest = f' (newest error: {errors[0][1]})' if errors else ''
  raise CheckpointError(f'none of the {len(steps)} checkpoints in {manager.directory} could be '
                        f'restored{newest}')


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
    self._workdir = Workdir(workdir)
    self.directory = self._workdir.checkpoints
    self._metadata = canonical(dict(metadata or {}))
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
      raise CheckpointSaveError(self._workdir.save_failure(
          step, f'no space left on device ({free / 2**20:.2f} MiB free, the checkpoint '
          f'needs about {needed * 1.1 / 2**20:.2f} MiB)'), self._workdir.log)
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
      raise CheckpointSaveError(self._workdir.save_failure(step, _save_cause(e)),
                                self._workdir.log) from None

  def restore(self, abstract_state: PyTree, data_iterator: Any = None) -> Optional[PyTree]:
    """The latest readable checkpoint as a pytree shaped (and sharded) like `abstract_state`.

    `abstract_state` leaves are `jax.ShapeDtypeStruct`s whose `.sharding` says where
    restored arrays go (any mesh). Returns None if there is no checkpoint at all.
    A corrupt step is skipped with a warning (and moved to `checkpoints_corrupt/`
    once an older one restores); raises CheckpointError if the metadata disagrees
    with this run's or no step can be restored.
    """
    self._manager.reload()
    if not self._manager.all_steps():
      return None

    def read(step: int, where: str) -> tuple[PyTree, dict[str, Any]]:
      saved = _read_step_metadata(self._manager, step)
      diffs = mismatch(saved, self._metadata) + structure_mismatch(saved, abstract_state)
      if not diffs:
        diffs = shape_mismatch(self._manager.item_metadata(step)['state'].tree, abstract_state)
      if diffs:
        raise CheckpointError(f'{where} was saved by a different run ({"; ".join(diffs[:5])}); '
                              'use a new --workdir or restore the original config/vocabulary')
      return self._restore_step(step, abstract_state, saved, where)

    (state, data), where, corrupt = newest_readable(self._manager, read)
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
    self._quarantine(corrupt)
    return state

  def _restore_step(self, step: int, abstract_state: PyTree, saved: Mapping[str, Any],
                    where: str) -> tuple[PyTree, dict[str, Any]]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_state,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
        data=ocp.args.JsonRestore()))
    verify_checksums(restored.state, saved.get('checksums', {}), where)
    return restored.state, restored.data

  def _quarantine(self, steps: Sequence[int]) -> None:
    """Move corrupt steps newer than the restored one out of the way (never delete them)."""
    if not steps:
      return
    if jax.process_index() == 0:
      target = self._workdir.corrupt
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


# ------------------------------------------------------------ averaging and inference input


def average_checkpoints(workdir: str, num_last: int) -> str:
  """Average the params of the last `num_last` checkpoints into `<workdir>/averaged`.

  Means are taken in float64 and cast back to each parameter's dtype. Returns the
  path. Inputs are checksum-verified and must share model config and vocabulary.
  """
  if num_last < 1:
    raise CheckpointError(f'num_last must be >= 1, got {num_last}')
  wd = Workdir(workdir)
  manager = _manager(wd.checkpoints, create=False)
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
    except CorruptError as e:
      raise CheckpointError(str(e)) from None
    if reference is None:
      reference = metadata
    elif diffs := mismatch(metadata, {k: reference[k] for k in ('model_config', 'vocab_sha256')
                                      if k in reference}):
      raise CheckpointError(f'{manager.directory}/{step} differs from step {steps[0]}: {diffs[0]}')
    as_float64 = jax.tree.map(lambda x: x.astype(np.float64), params)
    total = as_float64 if total is None else jax.tree.map(np.add, total, as_float64)
  averaged = jax.tree.map(lambda t, p: (t / len(steps)).astype(p.dtype), total, params)
  metadata = {k: v for k, v in reference.items() if k not in ('checksums', 'step')}
  return write_averaged(workdir, averaged, {**metadata, 'averaged_steps': steps})


def write_averaged(workdir: str, params: PyTree, metadata: Mapping[str, Any]) -> str:
  """Write `params` (numpy) and `metadata` (model config, vocabulary hash, ...) with their
  checksums as `<workdir>/averaged`, the parameters inference prefers; returns the path."""
  metadata = {**metadata, 'checksums': tree_checksums({'params': params})}
  path = Workdir(workdir).averaged
  with _averaged_checkpointer() as ckptr:
    ckptr.save(path, force=True, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params), metadata=ocp.args.JsonSave(metadata)))
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
    verify_checksums({'params': params}, metadata.get('checksums', {}), path)
  except Exception as e:  # noqa: BLE001 - unreadable or corrupt: the caller says what to do.
    cause = _describe(e).replace(f'{path}: ', '')
    raise CorruptError(cause if len(cause) <= 100 else cause[:97] + '...') from None
  return params, metadata


def load_params(workdir: str) -> tuple[PyTree, dict[str, Any], str]:
  """(params as numpy arrays, checkpoint metadata, path) of what inference uses: the
  `averaged` checkpoint if present (warning if newer steps exist), else the newest
  readable step. Every array is checksum-verified. An unreadable `averaged` falls back to
  the newest readable step with a warning; CheckpointError (path and fix first) if the
  workdir has no step."""
  wd = Workdir(workdir)
  if os.path.isdir(wd.averaged):
    try:
      params, metadata = _load_averaged(wd.averaged)
    except CorruptError as e:
      if not wd.steps():
        raise CheckpointError(f'{wd.averaged} is unreadable and there is no checkpoint step '
                              f'to use instead: restore it, or import the model again ({e})'
                              ) from None
      logging.warning('%s is unreadable: using the newest readable step instead; rebuild it '
                      'with transformer-jax-average --workdir %s (%s)', wd.averaged, workdir, e)
    else:
      steps, newest = metadata.get('averaged_steps', []), max(wd.steps(), default=None)
      logging.info('using the average of steps %s from %s', steps, wd.averaged)
      if newest is not None and steps and newest > max(steps):
        logging.warning('%s averages steps %s but step %d exists; re-run average_checkpoints '
                        'to use the newer ones', wd.averaged, steps, newest)
      return params, metadata, wd.averaged
  manager = _manager(wd.checkpoints, create=False)
  (params, metadata), where, _ = newest_readable(
      manager, lambda step, _: _restore_params(manager, step))
  logging.info('no averaged checkpoint; using %s', where)
  return params, metadata, where
