"""Device mesh and the logical-axis rules: the one place that says how arrays are split.

Mesh axes: ``data`` (pure data parallelism), ``fsdp`` (data parallelism with
parameters and optimizer state sharded too) and ``tensor`` (Megatron-style
model parallelism over heads / d_ff / vocab). The model names its parameter
and activation axes logically (`vocab`, `embed`, `mlp`, `heads`, `kv`,
`batch`, `length`); `LOGICAL_AXIS_RULES` maps those names to mesh axes.

Activation constraints (`nn.with_logical_constraint` in the model) only take
effect while tracing inside `use_mesh(mesh)`: flax reads the mesh from
`jax.sharding.get_abstract_mesh()`, which `jax.set_mesh` sets and the deprecated
``with mesh:`` does not (JAX 0.10-0.11).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# Logical axis name -> mesh axis (or axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('vocab', 'tensor'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('embed', 'fsdp'),
    ('length', None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replace a single -1 in `mesh_shape` (data, fsdp, tensor) by what is left of `num_devices`."""
  shape = [int(d) for d in mesh_shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'mesh_shape needs {len(MESH_AXES)} entries {MESH_AXES}, got {shape}')
  if shape.count(-1) > 1 or any(d == 0 or d < -1 for d in shape):
    raise ValueError(f'mesh_shape entries must be positive with at most one -1, got {shape}')
  known = int(np.prod([d for d in shape if d != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f'mesh_shape {shape} does not divide {num_devices} devices')
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f'mesh_shape {shape} needs {int(np.prod(shape))} devices, '
                     f'but {num_devices} are available')
  return tuple(shape)


def create_mesh(mesh_shape: Sequence[int] = (-1, 1, 1),
                dcn_mesh_shape: Optional[Sequence[int]] = None,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Mesh over axes (data, fsdp, tensor) of all (global) devices; -1 means "the rest".

  With `dcn_mesh_shape` (multi-slice TPU), `mesh_shape` is the per-slice (ICI)
  shape and `dcn_mesh_shape` the shape across slices (usually (slices, 1, 1)).
  """
  devices = list(devices if devices is not None else jax.devices())
  if dcn_mesh_shape is not None:
    num_slices = int(np.prod(dcn_mesh_shape))
    if len(devices) % num_slices:
      raise ValueError(f'dcn_mesh_shape {tuple(dcn_mesh_shape)} does not divide '
                       f'{len(devices)} devices')
    ici = resolve_mesh_shape(mesh_shape, len(devices) // num_slices)
    grid = mesh_utils.create_hybrid_device_mesh(ici, tuple(dcn_mesh_shape), devices)
  else:
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    try:
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
      grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[Mesh]:
  """Make `mesh` the current mesh and activate `rules`, so the model's logical
  activation constraints apply while tracing (jit's in/out shardings alone leave the
  activations' layout to XLA's propagation). The train and eval steps trace under it.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield mesh


def axis_rules(rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES):
  """Context manager activating only `rules` (no mesh: constraints stay no-ops)."""
  return nn.logical_axis_rules(rules)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, name: str) -> P:
  """Drop mesh axes from dimensions they do not divide (that dimension is then replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names]))
    if dim % size:
      logging.warning('%s: dimension %d is not divisible by mesh axes %s (%d devices); '
                      'replicating it', name, dim, names, size)
      axes = None
    fitted.append(axes)
  return P(*fitted)


def logical_sharding(logical_tree: Any, mesh: Mesh,
                     rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """Tree of logical PartitionSpecs (e.g. from `nn.get_partition_spec`) -> NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def tree_shardings(boxed_tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a (possibly abstract) pytree whose leaves may be flax `Partitioned` boxes.

  The result has the structure of the unboxed tree. Unboxed leaves are replicated;
  a dimension a mesh axis does not divide (e.g. an odd vocabulary) is replicated
  with a warning instead of failing inside jit.
  """
  shardings = logical_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)
  shapes = nn.meta.unbox(boxed_tree)

  def fit(path, sharding, leaf):
    spec = _fit_spec(sharding.spec, np.shape(leaf), mesh, jax.tree_util.keystr(path) or 'array')
    return NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(fit, shardings, shapes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, ...] batches: split B over (data, fsdp), replicate over tensor."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (scalars, metrics)."""
  return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=None)
def batch_split(mesh: Mesh) -> tuple[int, int]:
  """(index, count): which of `count` equal row blocks of the global batch this process feeds.

  Processes whose devices hold the same rows (replicas over `tensor`) get the same
  index; pass these, not `jax.process_index()/process_count()`, to the input pipeline.
  """
  rows = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  index_map = batch_sharding(mesh).devices_indices_map((rows,))
  blocks = {}
  for device, (index,) in index_map.items():
    blocks.setdefault(device.process_index, set()).add(index.start or 0)
  distinct = sorted({tuple(sorted(b)) for b in blocks.values()})
  return distinct.index(tuple(sorted(blocks[jax.process_index()]))), len(distinct)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble a global batch from this process's rows (multi-host safe).

  Each process passes its local [B / count, ...] rows, `count` from `batch_split`;
  the result is a global [B, ...] jax.Array per key, sharded over (data, fsdp).
  Local rows that do not split evenly over this process's batch shards (e.g. a
  token-bucketed batch of 625 rows on 8 GPUs) are completed with all-zero rows:
  token 0 is padding, masked out of attention and the loss.
  """
  sharding = batch_sharding(mesh)
  _, count = batch_split(mesh)
  local_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES])) // count
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f'batch[{key!r}] is a scalar; batch entries are [rows, ...] arrays')
    if value.shape[0] % local_shards:
      extra = local_shards - value.shape[0] % local_shards
      value = np.pad(value, [(0, extra)] + [(0, 0)] * (value.ndim - 1))
    global_shape = (value.shape[0] * count,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
