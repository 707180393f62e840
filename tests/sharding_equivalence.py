"""Run by tests/test_sharding.py in a subprocess with 8 virtual CPU devices.

Usage: sharding_equivalence.py CACHE_DIR MESH... (each MESH as data,fsdp,tensor).

Trains the same tiny model for a few steps on 1 device and on each mesh, restores
the 1-device run's checkpoint onto each mesh, and prints one JSON line per mesh:
losses, the largest parameter difference to the 1-device run, the parameter
shardings of a few leaves, the restored checkpoint's difference and sharding, the
sharding an activation constraint produced and a 5-row batch as `shard_batch` pads it.
"""

import os
import sys

os.environ['JAX_NUM_CPU_DEVICES'] = '8'
os.environ['JAX_PLATFORMS'] = 'cpu'

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from transformer_jax import TransformerConfig, checkpoint, sharding  # noqa: E402
from transformer_jax.training import synthetic, train_lib
from transformer_jax.training import optimizer as optimizer_lib
from transformer_jax import workdir as workdir_lib  # noqa: E402
from transformer_jax.training import config as config_lib  # noqa: E402

jax.config.update('jax_compilation_cache_dir', sys.argv[1])

STEPS = 3
MODEL = TransformerConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=8,
                          num_encoder_layers=1, num_decoder_layers=1, max_len=16,
                          dropout_rate=0.1)
PROBES = {  # leaf path -> what LOGICAL_AXIS_RULES say its PartitionSpec is.
    'source_embed/embedding': ('tensor', 'fsdp'),
    'encoder/layer_0/ffn/wi/kernel': ('tensor', 'fsdp'),
    'encoder/layer_0/ffn/wo/kernel': ('fsdp', 'tensor'),
    'decoder/layer_0/self_attention/query/kernel': ('tensor', None, 'fsdp'),
    'decoder/layer_0/cross_attention/out/kernel': ('fsdp', 'tensor', None),
}


def train_config():
  config = config_lib.default_config()
  config.warmup_steps = 1
  config.learning_rate_multiplier = 0.05
  # Adam divides by sqrt(v) + eps: with the paper's 1e-9, float rounding in gradients
  # that are ~0 would flip whole update steps; 1e-4 keeps the comparison about sharding.
  config.adam_eps = 1e-4
  config.loss_chunk_tokens = 32  # 4 positions of the 8 rows a chunk: the loss in 4 chunks
  return config


def batches(n):
  it = synthetic.synthetic_batches(batch_size=8, length=16, vocab_size=MODEL.vocab_size)
  return [next(it) for _ in range(n)]


def leaf(tree, path):
  for key in path.split('/'):
    tree = tree[key]
  return tree


def run(mesh):
  config = train_config()
  optimizer, schedule = optimizer_lib.create_optimizer(config, MODEL.d_model)
  state = train_lib.create_train_state(MODEL, optimizer, mesh, seed=0)
  step = train_lib.make_train_step(MODEL, config, mesh, optimizer, schedule)
  specs = {p: list(leaf(state.params, p).sharding.spec) for p in PROBES}
  specs['opt_mu/' + next(iter(PROBES))] = list(
      leaf(state.opt_state[0].mu, next(iter(PROBES))).sharding.spec)
  losses = []
  for batch in batches(STEPS):
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics['loss'] / metrics['tokens']))
  return losses, state, specs


def max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


def constraint_spec(mesh):
  """The sharding `nn.with_logical_constraint` gives an activation under use_mesh."""
  fn = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ('batch', 'length', 'mlp')))
  with sharding.use_mesh(mesh):
    return list(fn(jnp.ones((8, 4, 8))).sharding.spec)


def main():
  ref_losses, ref_state, _ = run(sharding.create_mesh((1, 1, 1), devices=jax.devices()[:1]))
  print(json.dumps({'mesh': [1, 1, 1], 'losses': ref_losses}), flush=True)
  workdir = tempfile.mkdtemp()
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1000, keep=1, async_save=False,
                                 metadata={'model_config': workdir_lib.model_config_to_dict(MODEL)})
  ckpt.maybe_save(STEPS, ref_state, force=True)
  optimizer, _ = optimizer_lib.create_optimizer(train_config(), MODEL.d_model)
  for arg in sys.argv[2:]:
    shape = tuple(int(d) for d in arg.split(','))
    mesh = sharding.create_mesh(shape)
    losses, state, specs = run(mesh)
    restored = ckpt.restore(train_lib.abstract_train_state(MODEL, optimizer, mesh))
    probe = leaf(restored.params, next(iter(PROBES)))
    odd_vocab = nn.Partitioned(jax.ShapeDtypeStruct((37, 32), jnp.float32), ('vocab', 'embed'))
    print(json.dumps({
        'mesh': list(shape), 'losses': losses,
        'max_param_diff': max_diff(state.params, ref_state.params),
        'restore_diff': max_diff(restored, ref_state), 'specs': specs,
        'restored_spec': list(probe.sharding.spec),
        'restored_mesh': list(probe.sharding.mesh.shape.values()),
        'constraint': constraint_spec(mesh),
        'odd_vocab': list(sharding.tree_shardings(odd_vocab, mesh).spec),
        'padded_batch': np.asarray(sharding.shard_batch(
            {'inputs': np.ones((5, 4), np.int32)}, mesh)['inputs']).tolist()}), flush=True)
  ckpt.close()
  shutil.rmtree(workdir)


if __name__ == '__main__':
  main()
