"""The training loop's clock: training seconds, the time budget and every cadence.

In the spirit of big_vision's `Chrono`/`itstime`: one object answers "is it time to stop,
log, evaluate, save?" for the loop. Training seconds count the wall time of training
steps only: a step's time ends when its metrics are read (`lap`), and `paused()` around an
evaluation keeps that time out. They are saved with every checkpoint (`progress()`) and
restored from it, so a resumed run continues its budget instead of starting a new one.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator, Mapping


class Clock:
  """Cadences of `config` (steps and minutes) over training seconds.

  `num_train_steps`, `train_minutes` (0: no budget), `log_every_steps`,
  `eval_every_steps`, `eval_every_minutes` (0: off) and `save_every_steps` come from the
  config; `progress` is what `progress()` returned when the restored checkpoint was saved.
  """

  def __init__(self, config: Any, progress: Mapping[str, Any]):
    self._num_steps, self._log_every = config.num_train_steps, config.log_every_steps
    self._eval_every, self._save_every = config.eval_every_steps, config.save_every_steps
    self._budget = config.train_minutes * 60 or math.inf
    self._eval_interval = config.eval_every_minutes * 60
    self.train_seconds = float(progress.get('train_seconds', 0.0))  # committed at log points
    self._lapped = 0.0  # seconds of the steps lapped since the last commit
    self._mark = time.perf_counter()
    self._running = True
    self._next_eval = self._next_eval_after(self.train_seconds)

  def _next_eval_after(self, seconds: float) -> float:
    """The next multiple of the eval interval after `seconds` (inf when off)."""
    if not self._eval_interval:
      return math.inf
    return (seconds // self._eval_interval + 1) * self._eval_interval

  def trained(self) -> float:
    """Seconds of training so far, the steps in flight included."""
    in_flight = time.perf_counter() - self._mark if self._running else 0.0
    return self.train_seconds + self._lapped + in_flight

  def lap(self) -> float:
    """End a step's time (call once its metrics are read); returns its seconds."""
    now = time.perf_counter()
    seconds, self._mark = now - self._mark, now
    self._lapped += seconds
    return seconds

  def commit(self) -> float:
    """Add the lapped seconds to `train_seconds` (at a log point); returns them."""
    seconds, self._lapped = self._lapped, 0.0
    self.train_seconds += seconds
    return seconds

  def done(self, step: int) -> bool:
    """True once `num_train_steps` are done or the minute budget is spent."""
    return step >= self._num_steps or self.trained() >= self._budget

  def eval_due(self, step: int) -> bool:
    """Every `eval_every_steps` steps, and every `eval_every_minutes` of training."""
    return step % self._eval_every == 0 or self.trained() >= self._next_eval

  def log_due(self, step: int) -> bool:
    return step % self._log_every == 0

  def save_due(self, step: int) -> bool:
    return step % self._save_every == 0

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Evaluate inside: its time is not training time, and the next minute-based
    evaluation is counted from the committed training seconds."""
    if self._next_eval <= self.train_seconds:
      self._next_eval = self._next_eval_after(self.train_seconds)
    yield
    self._mark = time.perf_counter()

  def progress(self) -> dict[str, float]:
    """What a checkpoint saves of the clock (and `Clock(config, progress)` reads back)."""
    return {'train_seconds': self.trained()}

  def stop(self) -> None:
    """Commit the lapped seconds and stop counting (time after the last step is not
    training)."""
    self.commit()
    self._running = False
