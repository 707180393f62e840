"""Sharding: mesh shapes, the logical-axis rules, and 1-device equivalence on 8 CPU devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer_jax import sharding

HERE = os.path.dirname(os.path.abspath(__file__))
MESHES = ((8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8))
CONSTRAINED = {(8, 1, 1): ['data'], (1, 8, 1): ['fsdp'],
               (2, 2, 2): [['data', 'fsdp'], None, 'tensor'], (1, 1, 8): [None, None, 'tensor']}


@pytest.mark.parametrize('shape,devices,expected', [
    ((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((1, 1, -1), 4, (1, 1, 4)),
    ((1, 1, 1), 1, (1, 1, 1))])
def test_resolve_mesh_shape(shape, devices, expected):
  assert sharding.resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize('shape,devices,message', [
    ((-1, -1, 1), 8, 'at most one -1'), ((3, -1, 1), 8, 'does not divide'),
    ((2, 2, 1), 8, 'needs 4 devices'), ((8, 1), 8, 'needs 3 entries'),
    ((0, -1, 1), 8, 'positive')])
def test_resolve_mesh_shape_rejects(shape, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_mesh_shape(shape, devices)


def test_single_device_mesh_and_batch():
  mesh = sharding.create_mesh((-1, 1, 1))
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1}
  assert sharding.batch_split(mesh) == (0, 1)
  batch = sharding.shard_batch({'inputs': np.arange(12, dtype=np.int32).reshape(3, 4)}, mesh)
  np.testing.assert_array_equal(batch['inputs'], np.arange(12).reshape(3, 4))
  with pytest.raises(ValueError, match=r"batch\['x'\] is a scalar"):
    sharding.shard_batch({'x': np.int32(1)}, mesh)


def test_rules_cover_every_model_axis(tiny_config):
  """Every logical axis the model names has exactly one rule."""
  import jax.numpy as jnp
  from flax import linen as nn
  from transformer_jax import Transformer
  ones = jnp.ones((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: Transformer(tiny_config).init(jax.random.key(0), ones, ones))
  names = {n for spec in jax.tree.leaves(nn.get_partition_spec(boxed)) for n in spec if n}
  rules = [name for name, _ in sharding.LOGICAL_AXIS_RULES]
  assert len(rules) == len(set(rules))
  assert {'vocab', 'embed', 'mlp', 'heads', 'kv'} <= names
  assert names <= set(rules), names - set(rules)


@pytest.mark.slow
def test_meshes_match_one_device():
  """(8,1,1), (1,8,1), (2,2,2), (1,1,8): same losses and params as 1 device, sharded per
  the rules; the 1-device run's checkpoint restores onto each of these meshes.

  Tolerance: losses rtol 1e-5 and parameters atol 1e-5 after 3 Adam steps in float32
  (observed ~2e-7: only the reduction order differs).
  """
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)}
  cache = jax.config.jax_compilation_cache_dir or ''
  out = subprocess.run(
      [sys.executable, os.path.join(HERE, 'sharding_equivalence.py'), cache,
       *(','.join(map(str, m)) for m in MESHES)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  reference, results = rows[0], {tuple(r['mesh']): r for r in rows[1:]}
  assert set(results) == set(MESHES)
  for mesh, r in results.items():
    np.testing.assert_allclose(r['losses'], reference['losses'], rtol=1e-5, err_msg=str(mesh))
    assert r['max_param_diff'] < 1e-5, (mesh, r['max_param_diff'])
    # The 1-device checkpoint restores exactly onto this mesh, sharded by the rules.
    assert r['restore_diff'] == 0.0, mesh
    assert r['restored_spec'] == ['tensor', 'fsdp'] and r['restored_mesh'] == list(mesh)
    assert r['specs'] == {
        'source_embed/embedding': ['tensor', 'fsdp'],
        'opt_mu/source_embed/embedding': ['tensor', 'fsdp'],
        'encoder/layer_0/ffn/wi/kernel': ['tensor', 'fsdp'],
        'encoder/layer_0/ffn/wo/kernel': ['fsdp', 'tensor'],
        'decoder/layer_0/self_attention/query/kernel': ['tensor', None, 'fsdp'],
        'decoder/layer_0/cross_attention/out/kernel': ['fsdp', 'tensor', None],
    }, mesh
    # An activation constrained to ('batch', 'length', 'mlp') under use_mesh
    # (XLA drops mesh axes of size 1 from the resulting spec).
    assert r['constraint'] == CONSTRAINED[mesh], mesh
    # A vocabulary of 37 does not split over tensor > 1: that dimension is replicated.
    assert r['odd_vocab'] == [None if mesh[2] > 1 else 'tensor', 'fsdp'], mesh
    # 5 rows over data x fsdp shards: completed with all-zero (padding) rows.
    shards = mesh[0] * mesh[1]
    assert r['padded_batch'] == [[1] * 4] * 5 + [[0] * 4] * (-5 % shards), mesh
