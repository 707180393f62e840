"""Decoding per device: each device of a mesh decodes its share of a batch's rows.

Sentences are decoded independently, so a search needs no collectives: under
`jax.shard_map` every device runs its own loop over its rows and stops when they are done,
instead of one global program whose top-k inputs the partitioner all-gathers at every
step. Compiled programs are kept in a cache of `JIT_CACHE_SIZE`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from transformer_jax.sharding import BATCH_AXES

# Per-device programs kept compiled (one per search, mesh and static options).
JIT_CACHE_SIZE = 32


def batch_axes(mesh: Optional[Mesh]) -> tuple[str, ...]:
  """The mesh axes a batch's rows are split over (`sharding.BATCH_AXES` the mesh has)."""
  return () if mesh is None else tuple(a for a in BATCH_AXES if a in mesh.axis_names)


@functools.lru_cache(maxsize=JIT_CACHE_SIZE)
def _per_device(core: Callable, mesh: Mesh, axes: tuple[str, ...], num_args: int,
                static: tuple[tuple[str, Any], ...]) -> Callable:
  """core(step, inputs, *args, **static) run by each device on its own rows (rows split
  over `axes`; the step, e.g. its params, replicated); a PRNG-key argument is made
  distinct per device.

  Without replication checks (`check_vma`): core is written for global arrays, and its
  loop state starts equal on all devices and then differs, which is the point here."""
  def local(step, inputs, *args):
    shard = lax.axis_index(axes)
    args = [jax.random.fold_in(a, shard)
            if jax.dtypes.issubdtype(getattr(a, 'dtype', None), jax.dtypes.prng_key) else a
            for a in args]
    return core(step, inputs, *args, **dict(static))
  rows = P(axes)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), rows) + (P(),) * num_args,
                               out_specs=rows, check_vma=False))


def run(core: Callable, step: Any, inputs: jax.Array, args: tuple[Any, ...],
        mesh: Optional[Mesh], **static: Any) -> Any:
  """core(step, inputs, *args, **static): one global program, or with `mesh` each device
  decoding its share of the rows (core must decode rows independently; its outputs are
  [B, ...]). Rows are padded to a multiple of the shards and cut after."""
  axes = batch_axes(mesh)
  if not axes:
    return core(step, inputs, *args, **static)
  shards, batch = int(np.prod([mesh.shape[a] for a in axes])), inputs.shape[0]
  if batch % shards:
    inputs = jnp.pad(inputs, ((0, shards - batch % shards), (0, 0)))
  outputs = _per_device(core, mesh, axes, len(args), tuple(sorted(static.items())))(
      step, inputs, *args)
  return jax.tree.map(lambda x: x[:batch], outputs)
