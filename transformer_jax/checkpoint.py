"""Checkpoints (orbax): save, resume with one corrupt-step fallback, averaging.

A step lives in `<workdir>/checkpoints/<step>/` with three orbax items: `state`
(the TrainState pytree, sharded arrays), `data` (each process's input-iterator
position as JSON, `process_<i>.json`) and `metadata` (JSON: model config,
vocabulary hash, one checksum per array). Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it once every item is committed, so a
step directory is complete or absent. Restoring verifies the metadata against the
current run (config / vocabulary mismatch -> CheckpointError) and the checksums
(a corrupt step -> warning, fall back to the previous one: `newest_readable`, for
resuming and for inference alike). Paths come from `workdir.Workdir`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from transformer_jax.model import TransformerConfig
from transformer_jax.workdir import CheckpointError, Workdir, file_sha256, model_config_to_dict

PyTree = Any
T = TypeVar('T')
# Model-config fields that change how the model runs, not what its weights mean.
_RUNTIME_FIELDS = frozenset({'attention_impl', 'remat'})


def training_metadata(cfg: TransformerConfig, vocab_path: str) -> dict[str, Any]:
  """The `metadata` a training run passes to `Checkpointer`: model config + vocabulary hash."""
  return {'model_config': model_config_to_dict(cfg), 'vocab_sha256': file_sha256(vocab_path)}


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


def _describe(error: BaseException) -> str:
  """'TypeName: first line of the message' (at most 300 characters), for one-line errors."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


def _canonical(value: Any) -> Any:
  """JSON round trip: tuples -> lists, so values compare like their saved form."""
  return json.loads(json.dumps(value))


def mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
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


def shape_mismatch(saved: PyTree, expected: PyTree) -> list[str]:
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
    self._metadata = _canonical(dict(metadata or {}))
    self.restored_progress: dict[str, Any] = {}
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
    before returning, the write finishes in the background.
    """
    step = int(step)
    if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
      return False
    data = {'position': None if data_iterator is None
            else _encode_data_state(data_iterator.get_state()),
            'progress': dict(progress or {})}
    metadata = dict(self._metadata, step=step, checksums=tree_checksums(state))
    return self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data),
        metadata=ocp.args.JsonSave(metadata)))

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
      diffs = mismatch(saved, self._metadata) + _structure_mismatch(saved, abstract_state)
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
    _verify_checksums(restored.state, saved.get('checksums', {}), where)
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
    """Block until the pending asynchronous save (if any) is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Wait for pending saves and release the manager."""
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
    except _CorruptError as e:
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
    _verify_checksums({'params': params}, metadata.get('checksums', {}), path)
  except Exception as e:  # noqa: BLE001 - unreadable or corrupt: say how to fix it.
    raise CheckpointError(f'{path} is unreadable ({_describe(e)}); re-run average_checkpoints'
                          ) from None
  return params, metadata


def load_params(workdir: str) -> tuple[PyTree, dict[str, Any], str]:
  """(params as numpy arrays, checkpoint metadata, path) of what inference uses: the
  `averaged` checkpoint if present (warning if newer steps exist), else the newest
  readable step. Every array is checksum-verified."""
  wd = Workdir(workdir)
  if os.path.isdir(wd.averaged):
    params, metadata = _load_averaged(wd.averaged)
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
