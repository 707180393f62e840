"""Multi-process start-up (`jax.distributed` from arguments, environment or cluster) and
preemption notices (`PreemptionGuard`).

`initialize()` must run before the first JAX computation on every process:

* explicit: arguments, or the environment ``JAX_COORDINATOR_ADDRESS`` (host:port of
  process 0), ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
* automatic: on Cloud TPU VMs (all workers), SLURM and Open MPI jobs, where
  `jax.distributed.initialize()` finds the peers itself;
* otherwise nothing happens (one process).

A dead peer: a collective with it fails at once where the transport notices
(gloo on CPU), and in any case the coordination service declares a process dead
after `heartbeat_timeout_s` without heartbeats and terminates the survivors
with an error (status != 0), so nothing hangs on a lost host.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Optional, Sequence

import jax
from jax.experimental import multihost_utils

_ENV_ADDRESS = 'JAX_COORDINATOR_ADDRESS'
_ENV_COUNT = 'JAX_NUM_PROCESSES'
_ENV_ID = 'JAX_PROCESS_ID'
# Environment markers of clusters whose peers `jax.distributed.initialize()` discovers.
_CLUSTER_MARKERS = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
                    'MEGASCALE_COORDINATOR_ADDRESS', 'OMPI_MCA_orte_hnp_uri')


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} is not an integer') from None


def _on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM: libtpu installed and TPU chips attached (what JAX itself checks)."""
  import glob
  import importlib.util
  return (importlib.util.find_spec('libtpu') is not None
          and bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')))


def _managed_cluster() -> bool:
  if any(os.environ.get(k) for k in _CLUSTER_MARKERS):
    return True
  if 'SLURM_STEP_NODELIST' in os.environ and _env_int('SLURM_NTASKS') not in (None, 1):
    return True  # inside `srun` with several tasks (not a bare `salloc` shell)
  return _on_cloud_tpu_vm()


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *,
               heartbeat_timeout_s: int = 60,
               initialization_timeout_s: int = 300) -> bool:
  """Start `jax.distributed` when configured (see module doc); True if it was started.

  `heartbeat_timeout_s`: seconds without heartbeats after which a process counts
  as dead and the others are terminated with an error.
  """
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get(_ENV_ADDRESS) or None
  count = num_processes if num_processes is not None else _env_int(_ENV_COUNT)
  index = process_id if process_id is not None else _env_int(_ENV_ID)
  timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_s,
                  initialization_timeout=initialization_timeout_s)
  if address or count is not None or index is not None:
    missing = [name for name, value in ((_ENV_ADDRESS, address), (_ENV_COUNT, count),
                                        (_ENV_ID, index)) if value is None]
    if missing and not _managed_cluster():
      raise ValueError(f"multi-process run needs {', '.join(missing)} too "
                       f'(got address={address!r}, processes={count}, id={index})')
    if count is not None and index is not None and not 0 <= index < count:
      raise ValueError(f'{_ENV_ID}={index} must be in [0, {_ENV_COUNT}={count})')
    jax.distributed.initialize(address, count, index, **timeouts)
  elif _managed_cluster():
    jax.distributed.initialize(**timeouts)
  else:
    return False
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """True on the process that writes logs, metrics and summaries (process 0)."""
  return jax.process_index() == 0


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
