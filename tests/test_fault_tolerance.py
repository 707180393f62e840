"""Real processes: a training run preempted (SIGTERM) and killed (-9, also mid-save) resumes
to the same bits as an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from transformer_jax import inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 32, 4
FLAGS = [f'--config.num_train_steps={STEPS}', f'--config.save_every_steps={EVERY}',
         '--config.keep_checkpoints=3', '--config.average_last=0',
         '--config.eval_every_steps=100000', '--config.log_every_steps=4']
TIMEOUT = 240


def start(workdir):
  """`train.py` on configs/tiny.py in the background; output goes to `<workdir>.log`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')  # conftest's cache
  with open(f'{workdir}.log', 'a') as log:
    return subprocess.Popen([sys.executable, 'train.py', '--config=configs/tiny.py',
                             f'--workdir={workdir}', *FLAGS], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def finish(proc, workdir):
  """(exit status, the log so far) once `proc` ends."""
  rc = proc.wait(timeout=TIMEOUT)
  with open(f'{workdir}.log') as f:
    return rc, f.read()


def steps_in(workdir):
  """(finalized steps, in-progress tmp dirs) under <workdir>/checkpoints."""
  names = os.listdir(os.path.join(workdir, 'checkpoints')) if os.path.isdir(
      os.path.join(workdir, 'checkpoints')) else []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if 'tmp' in n]


def wait_until(proc, condition, what):
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert proc.poll() is None, f'training exited (rc {proc.returncode}) before {what}'
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.005)


def final_state(workdir):
  """The last step's saved metadata (step + a checksum of every state array) and params."""
  with open(os.path.join(workdir, 'checkpoints', str(STEPS), 'metadata', 'metadata')) as f:
    metadata = json.load(f)
  params, _, _ = inference.load_for_inference(workdir)
  return metadata, params


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run, started in the background while the interrupted one runs."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  proc = start(workdir)
  yield lambda: (finish(proc, workdir), workdir)
  if proc.poll() is None:
    proc.kill()


@pytest.mark.slow
def test_preempted_and_killed_run_resumes_bit_identically(tmp_path, reference):
  workdir = str(tmp_path / 'run')

  # 1. Preemption: SIGTERM once a checkpoint exists -> checkpoint, exit 0.
  proc = start(workdir)
  wait_until(proc, lambda: steps_in(workdir)[0], 'a checkpoint')
  proc.send_signal(signal.SIGTERM)
  rc, log = finish(proc, workdir)
  assert rc == 0, log[-2000:]
  preempted = int(re.search(r'preempted: saved step (\d+)', log).group(1))
  assert EVERY <= preempted < STEPS and steps_in(workdir)[0][-1] == preempted

  # 2. kill -9 while a save is in flight (orbax's tmp dir exists, not yet renamed).
  proc = start(workdir)
  wait_until(proc, lambda: steps_in(workdir)[1], 'a save in flight')
  proc.kill()
  assert finish(proc, workdir)[0] == -signal.SIGKILL
  finalized, partial = steps_in(workdir)  # partial: [] if the rename won the race.
  assert finalized[-1] >= preempted and not any(p.startswith(f'{s}.') for s in finalized
                                                for p in partial)

  # 3. kill -9 after the next checkpoint, then 4. run to the end.
  proc = start(workdir)
  wait_until(proc, lambda: steps_in(workdir)[0][-1] > finalized[-1], 'one more checkpoint')
  time.sleep(0.05)
  proc.kill()
  assert finish(proc, workdir)[0] == -signal.SIGKILL
  rc, log = finish(start(workdir), workdir)
  assert rc == 0, log[-2000:]
  assert steps_in(workdir) == ([STEPS - 2 * EVERY, STEPS - EVERY, STEPS], [])

  (ref_rc, ref_log), ref_workdir = reference()
  assert ref_rc == 0, ref_log[-2000:]
  assert 'preempted' not in ref_log
  ref_metadata, ref_params = final_state(ref_workdir)
  metadata, params = final_state(workdir)
  assert metadata == ref_metadata  # step, config, vocabulary and every array's checksum.
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
