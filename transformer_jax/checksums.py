"""Checksums of the exact bits of every array of a pytree, stored with each checkpoint.

`tree_checksums` runs on the devices where the arrays lie (a sharded array is summed in
place); `verify_checksums` raises CorruptError when restored bytes differ from the saved.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


PyTree = Any


def path_name(path: Sequence[Any]) -> str:
  """'params/encoder/.../kernel': a pytree key path as a slash-separated name."""
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
      raise TypeError(f'state leaf {path_name(path)} is a typed PRNG key; store '
                      'jax.random.key_data(key) in the train state instead')
  sums = np.asarray(_leaf_checksums([leaf for _, leaf in flat])) if flat else []
  return {path_name(path): int(s) for (path, _), s in zip(flat, sums)}


class CorruptError(Exception):
  """A step whose bytes do not match what was saved."""


def verify_checksums(tree: PyTree, expected: Mapping[str, int], where: str) -> None:
  """CorruptError naming `where` if an array of `tree` differs from its `expected`
  checksum or has none."""
  actual = tree_checksums(tree)
  bad = [k for k, v in actual.items() if k in expected and expected[k] != v]
  missing = [k for k in actual if k not in expected]
  if bad or missing:
    raise CorruptError(f'{where}: checksum mismatch for {(bad + missing)[:3]} '
                       f'({len(bad)} differ, {len(missing)} unknown)')
