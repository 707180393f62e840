"""Random token batches for tests and benchmarks: no TensorFlow, a checkpointable position."""

from __future__ import annotations

from typing import Any

import numpy as np


class _SyntheticBatches:
  """The iterator `synthetic_batches` returns; get_state/set_state save its position."""

  def __init__(self, batch_size: int, length: int, vocab_size: int, seed: int):
    self._shape, self._vocab_size = (batch_size, length), vocab_size
    self._rng = np.random.default_rng(seed)

  def __iter__(self) -> '_SyntheticBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    (batch_size, length), batch = self._shape, {}
    for key in ('inputs', 'targets'):
      tokens = self._rng.integers(3, self._vocab_size, (batch_size, length), dtype=np.int32)
      lengths = self._rng.integers(length // 2, length + 1, (batch_size, 1))
      batch[key] = np.where(np.arange(length) < lengths, tokens, 0).astype(np.int32)
    return batch

  def get_state(self) -> dict[str, Any]:
    return self._rng.bit_generator.state  # JSON-able: what a checkpoint stores.

  def set_state(self, state: dict[str, Any]) -> None:
    self._rng.bit_generator.state = state


def synthetic_batches(batch_size: int, length: int, vocab_size: int,
                      seed: int = 0) -> _SyntheticBatches:
  """Endless random [B, L] batches (ids >= 3, a random tail padded): no TF, for benchmarks.

  The iterator's position can be checkpointed (`get_state`/`set_state`), so a resumed
  run sees the batches an uninterrupted one would have.
  """
  return _SyntheticBatches(batch_size, length, vocab_size, seed)
