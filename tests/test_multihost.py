"""Multi-process training on localhost: 2 CPU processes (gloo) vs 1, and a dying peer.

The workers (tests/multihost_worker.py) call `distributed.initialize` with an explicit
coordinator, shard parameters across the processes (mesh (1, 2, 1)) and feed each
its half of the global batch through `sharding.shard_batch`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from transformer_jax.training import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'multihost_worker.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(mode, workdir, num_processes, process_id, port, **env):
  cache = jax.config.jax_compilation_cache_dir or ''
  full_env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), **env}
  return subprocess.Popen(
      [sys.executable, WORKER, mode, cache, str(workdir), str(num_processes),
       str(process_id), str(port)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def _result(proc, timeout=240):
  """The JSON line the worker's process 0 prints (None for other processes)."""
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  lines = [line for line in out.splitlines() if line.startswith('{')]
  return json.loads(lines[-1]) if lines else None


@pytest.fixture
def no_cluster_env(monkeypatch):
  """No distributed configuration in the environment, not on a TPU VM."""
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
               'SLURM_STEP_NODELIST', *distributed._CLUSTER_MARKERS):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, '_on_cloud_tpu_vm', lambda: False)
  return monkeypatch


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  """Same losses (rtol 1e-5) as 1 process on the same global batches; the checkpoint
  both processes wrote restores onto the 1-device mesh with the same parameters (1e-5)."""
  port = _free_port()
  procs = [_start('train', tmp_path, 2, i, port) for i in range(2)]
  procs.append(_start('reference', tmp_path, 1, 0, 0))  # Restores once the others saved.
  two, nothing, reference = [_result(p) for p in procs]
  assert nothing is None
  np.testing.assert_allclose(two['losses'], reference['losses'], rtol=1e-5)
  assert reference['restored_step'] == 3
  assert reference['max_param_diff'] < 1e-5


@pytest.mark.slow
def test_dead_peer_ends_the_survivor(tmp_path):
  """Killing either process (0 hosts the coordinator, 1 does not) makes the other exit
  non-zero well within 2 minutes (heartbeat timeout 10 s in the worker). Both cases
  run at the same time."""
  pairs = {}
  for victim in (0, 1):
    port = _free_port()
    pairs[victim] = [_start('die', tmp_path / str(victim), 2, i, port, DIE_ID=str(victim))
                     for i in range(2)]
  try:
    for victim, procs in pairs.items():
      procs[victim].wait(timeout=240)
      assert procs[victim].returncode == -signal.SIGKILL, procs[victim].stderr.read()[-3000:]
    died = time.monotonic()
    for victim, procs in pairs.items():
      survivor = procs[1 - victim]
      survivor.wait(timeout=120)
      assert survivor.returncode != 0, f'process {1 - victim} exited 0 after its peer died'
    assert time.monotonic() - died < 120
  finally:
    for procs in pairs.values():
      for p in procs:
        if p.poll() is None:
          p.kill()
        p.communicate()


def test_initialize_is_a_no_op_without_configuration(no_cluster_env):
  assert distributed.initialize() is False
  assert distributed.is_main_process()


@pytest.mark.parametrize('env,message', [
    ({'JAX_NUM_PROCESSES': '2'}, 'needs JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'},
     r'JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2\)'),
    ({'JAX_NUM_PROCESSES': 'two'}, "JAX_NUM_PROCESSES='two' is not an integer")])
def test_initialize_rejects_incomplete_configuration(no_cluster_env, env, message):
  for name, value in env.items():
    no_cluster_env.setenv(name, value)
  with pytest.raises(ValueError, match=message):
    distributed.initialize()


@pytest.mark.parametrize('env,expected', [
    ({'JAX_COORDINATOR_ADDRESS': 'h0:1234', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'},
     ('h0:1234', 4, 3)),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1'}, ()),  # Cloud TPU: jax finds the peers itself.
    ({'SLURM_STEP_NODELIST': 'n[0-1]', 'SLURM_NTASKS': '2'}, ())])
def test_initialize_from_environment(no_cluster_env, env, expected):
  calls = []
  no_cluster_env.setattr(jax.distributed, 'initialize',
                         lambda *args, **kwargs: calls.append((args, kwargs)))
  for name, value in env.items():
    no_cluster_env.setenv(name, value)
  assert distributed.initialize(heartbeat_timeout_s=30) is True
  assert calls == [(expected, {'heartbeat_timeout_seconds': 30,
                               'initialization_timeout': 300})]
