"""Device mesh and the logical-axis rules: the one place that says how arrays are split.

Mesh axes: ``data`` (pure data parallelism), ``fsdp`` (data parallelism with
parameters and optimizer state sharded too) and ``tensor`` (Megatron-style
model parallelism over heads / d_ff / vocab). The model names its parameter
and activation axes logically (`vocab`, `embed`, `mlp`, `heads`, `kv`,
`batch`, `length`); `LOGICAL_AXIS_RULES` maps those names to mesh axes.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis name -> mesh axis (or axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('embed', 'fsdp'),
    ('length', None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replace a single -1 in `mesh_shape` by what is left of `num_devices`."""
  shape = list(mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'mesh_shape needs {len(MESH_AXES)} entries {MESH_AXES}, got {shape}')
  if shape.count(-1) > 1:
    raise ValueError(f'mesh_shape may contain at most one -1, got {shape}')
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
  """Mesh over axes (data, fsdp, tensor); -1 means "the remaining devices".

  With `dcn_mesh_shape` (multi-slice TPU), `mesh_shape` is the per-slice (ICI)
  shape and `dcn_mesh_shape` the shape across slices.
  """
  devices = list(devices if devices is not None else jax.devices())
  if dcn_mesh_shape is not None:
    num_slices = int(np.prod(dcn_mesh_shape))
    ici = resolve_mesh_shape(mesh_shape, len(devices) // num_slices)
    grid = mesh_utils.create_hybrid_device_mesh(ici, tuple(dcn_mesh_shape), devices)
  else:
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    try:
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
      grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_sharding(logical_tree: Any, mesh: Mesh,
                     rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """Tree of logical PartitionSpecs (e.g. from `nn.get_partition_spec`) -> NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def tree_shardings(boxed_tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a (possibly abstract) pytree whose leaves are flax `Partitioned` boxes.

  Unboxed leaves are replicated.
  """
  return logical_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, ...] batches: split B over (data, fsdp), replicate over tensor."""
  return NamedSharding(mesh, P(('data', 'fsdp')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble a global batch from this process's rows (multi-host safe).

  Each process passes its local [B / process_count, ...] rows; the result is a
  global [B, ...] jax.Array per key, sharded over (data, fsdp).
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def axis_rules(rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES):
  """Context manager activating `rules` for `nn.with_logical_constraint` in the model."""
  return nn.logical_axis_rules(rules)
