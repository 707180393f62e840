"""Whether a saved checkpoint fits the run or model that reads it.

A training run stores `training_metadata` (its model config and its vocabulary's hash)
with every checkpoint; `mismatch` lists what disagrees with a later run (the fields
`model_config.RUNTIME_FIELDS` names may change), `structure_mismatch` the arrays one has
and the other lacks, `shape_mismatch` the arrays of another shape.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax

from transformer_jax.checksums import path_name
from transformer_jax.model_config import RUNTIME_FIELDS, TransformerConfig
from transformer_jax.workdir import file_sha256, model_config_to_dict

PyTree = Any


def training_metadata(cfg: TransformerConfig, vocab_path: str) -> dict[str, Any]:
  """The `metadata` a training run passes to `Checkpointer`: model config + vocabulary hash."""
  return {'model_config': model_config_to_dict(cfg), 'vocab_sha256': file_sha256(vocab_path)}


def canonical(value: Any) -> Any:
  """JSON round trip: tuples -> lists, so values compare like their saved form."""
  return json.loads(json.dumps(value))


def mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """'key: checkpoint X != now Y' for every key both have and disagree on (one level
  deep); the model's `RUNTIME_FIELDS` may change between runs."""
  diffs = []
  for key, now in canonical(dict(current)).items():
    if key == 'checksums' or key not in saved or saved[key] == now:
      continue
    if isinstance(now, dict) and isinstance(saved[key], dict):
      diffs += [f'{key}.{k}: checkpoint {saved[key].get(k)!r} != now {now.get(k)!r}'
                for k in sorted(set(now) | set(saved[key]))
                if k not in RUNTIME_FIELDS and saved[key].get(k) != now.get(k)]
    else:
      diffs.append(f'{key}: checkpoint {saved[key]!r} != now {now!r}')
  return diffs


def structure_mismatch(saved: Mapping[str, Any], abstract_state: PyTree) -> list[str]:
  """Arrays the checkpoint has and the state lacks or vice versa (e.g. another optimizer)."""
  if 'checksums' not in saved:
    return []
  paths = {path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  missing, extra = sorted(set(saved['checksums']) - paths), sorted(paths - set(saved['checksums']))
  return ([f'state arrays only in the checkpoint: {missing[:3]}'] if missing else []) + (
      [f'state arrays not in the checkpoint: {extra[:3]}'] if extra else [])


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  return {path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_mismatch(saved: PyTree, expected: PyTree) -> list[str]:
  """Arrays (leaves with `.shape`: arrays, orbax metadata, ShapeDtypeStructs) that the
  checkpoint has with another shape than expected, or lacks; e.g. kernels saved [in, out]
  by transformer_jax < 0.2, which now stores them [out, in]."""
  have, want = _shapes(saved), _shapes(expected)
  differ = [name for name in sorted(have.keys() & want.keys()) if have[name] != want[name]]
  diffs = [f'{name} has shape {have[name]} in the checkpoint, {want[name]} here'
           for name in differ[:2]]
  diffs += [f'{len(differ) - 2} more arrays differ in shape'] if len(differ) > 2 else []
  missing = sorted(want.keys() - have.keys())
  diffs += [f'arrays not in the checkpoint: {missing[:3]}'] if missing else []
  if any(name.endswith('kernel') for name in differ):
    diffs.append('checkpoints of transformer_jax < 0.2 store kernels [in, out]')
  return diffs
