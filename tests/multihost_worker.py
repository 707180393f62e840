"""One process of the localhost multi-process tests (run by tests/test_multihost.py).

Usage: multihost_worker.py MODE CACHE_DIR WORKDIR NUM_PROCESSES PROCESS_ID PORT

Every process has one CPU device; the mesh is (1, -1, 1), so with 2 processes the
parameters and optimizer state are sharded across them (fsdp) and each feeds its
own half of the same 8-row global batches. MODE:
  train      train STEPS steps, save a checkpoint through orbax (all processes),
             process 0 prints {"losses": [...]}.
  reference  1 process: train the same steps, then restore WORKDIR's checkpoint onto
             this mesh (waiting up to 4 minutes for it to appear) and print
             {"losses": [...], "max_param_diff": ..., "restored_step": ...}.
  die        train until killed; process DIE_ID kills itself (SIGKILL) after 2 steps.
"""

import os
import sys

MODE, CACHE, WORKDIR = sys.argv[1:4]
NUM_PROCESSES, PROCESS_ID, PORT = map(int, sys.argv[4:7])
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['JAX_NUM_CPU_DEVICES'] = '1'

import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from transformer_jax import sharding  # noqa: E402
from transformer_jax.training import distributed, synthetic, train_lib
from transformer_jax.training import optimizer as optimizer_lib
from transformer_jax import workdir as workdir_lib  # noqa: E402
from transformer_jax.training import config as config_lib  # noqa: E402
from transformer_jax.model import TransformerConfig  # noqa: E402

STEPS = 3
DIE_ID = int(os.environ.get('DIE_ID', '1'))
HEARTBEAT_S = 10
MODEL = TransformerConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=4,
                          num_encoder_layers=1, num_decoder_layers=1, max_len=16,
                          dropout_rate=0.1)


def main():
  jax.config.update('jax_compilation_cache_dir', CACHE)
  if NUM_PROCESSES > 1:
    distributed.initialize(f'localhost:{PORT}', NUM_PROCESSES, PROCESS_ID,
                           heartbeat_timeout_s=HEARTBEAT_S, initialization_timeout_s=60)
  config = config_lib.default_config()
  config.warmup_steps, config.learning_rate_multiplier, config.adam_eps = 1, 0.05, 1e-4
  mesh = sharding.create_mesh((1, -1, 1))
  optimizer, schedule = optimizer_lib.create_optimizer(config, MODEL.d_model)
  state = train_lib.create_train_state(MODEL, optimizer, mesh, seed=0)
  step = train_lib.make_train_step(MODEL, config, mesh, optimizer, schedule)
  # Compile ahead, then meet: gloo sets up its context at the first collective and gives
  # the other process only 30 s to arrive, less than a compile can take on a loaded CPU.
  batch_shape = jax.ShapeDtypeStruct((8, 16), np.int32, sharding=sharding.batch_sharding(mesh))
  step = step.lower(state, {'inputs': batch_shape, 'targets': batch_shape}).compile()
  if NUM_PROCESSES > 1:
    from jax._src import distributed as jax_distributed
    jax_distributed.global_state.client.wait_at_barrier('compiled', 240_000)
  index, count = sharding.batch_split(mesh)
  batches = synthetic.synthetic_batches(batch_size=8, length=16, vocab_size=MODEL.vocab_size)
  losses = []
  for i in range(STEPS if MODE != 'die' else 10 ** 6):
    rows = np.array_split(np.arange(8), count)[index]
    local = {k: v[rows] for k, v in next(batches).items()}
    state, metrics = step(state, sharding.shard_batch(local, mesh))
    losses.append(float(metrics['loss'] / metrics['tokens']))
    if MODE == 'die':
      print(f'process {PROCESS_ID} step {i}', flush=True)
      if i == 2 and PROCESS_ID == DIE_ID:
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(0.2)
  result = {'losses': losses}
  from transformer_jax import checkpoint  # orbax: slow to import, not needed to die.
  ckpt = checkpoint.Checkpointer(WORKDIR, save_every_steps=1000, keep=1,
                                 metadata={'model_config': workdir_lib.model_config_to_dict(MODEL)})
  if MODE == 'train':
    ckpt.maybe_save(STEPS, state, force=True)
    ckpt.wait()
  else:
    abstract = train_lib.abstract_train_state(MODEL, optimizer, mesh)
    deadline = time.monotonic() + 240
    while (restored := ckpt.restore(abstract)) is None and time.monotonic() < deadline:
      time.sleep(0.5)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         restored.params, state.params)
    result['max_param_diff'] = max(jax.tree.leaves(diffs))
    result['restored_step'] = int(restored.step)
  ckpt.close()
  if distributed.is_main_process():
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
