"""A training workdir's layout, in one place, and its small JSON files.

```
<workdir>/checkpoints/<step>/            orbax steps (`checkpoint.Checkpointer`)
<workdir>/checkpoints_corrupt/<step>-<t>  corrupt steps moved aside by a resume
<workdir>/averaged/                      the average of the last steps (`average_checkpoints`)
<workdir>/spm.model                      the vocabulary, unless config.vocab_path names one
<workdir>/vocab.two_models.json          ... or that of an imported Marian model (`marian`)
<workdir>/marian_files.json              an imported Marian model's Transformers JSON files
<workdir>/config.json                    the training config (once a resume accepted it)
<workdir>/model_config.json              the TransformerConfig, as `model_config_to_dict`
<workdir>/metrics.jsonl, tensorboard/    scalars (`metrics.MetricWriter`)
<workdir>/train.log                      the training CLI's whole log (the console shows less)
<workdir>/translations/<label>_step<N>.txt   what an evaluation decoded
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Mapping

import jax.numpy as jnp

from transformer_jax.model_config import LATER_FIELDS, TransformerConfig

_DTYPE_FIELDS = ('dtype', 'param_dtype')
# The vocabulary file of an imported model (a `tokenizer.TwoModelVocabulary`).
TWO_MODEL_VOCAB = 'vocab.two_models.json'


class WorkdirError(ValueError):
  """A workdir or one of its files cannot be used: missing, unreadable, invalid or
  incompatible (`checkpoint.CheckpointError`, `inference.InferenceError` are kinds of it);
  the command lines report it in one line."""


# Workdir attribute -> path below the root.
_LAYOUT = {'checkpoints': 'checkpoints', 'corrupt': 'checkpoints_corrupt', 'averaged': 'averaged',
           'config_json': 'config.json', 'model_config_json': 'model_config.json',
           'metrics_jsonl': 'metrics.jsonl', 'tensorboard': 'tensorboard', 'log': 'train.log',
           'two_model_vocab': TWO_MODEL_VOCAB, 'marian_files': 'marian_files.json'}


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The paths of a training workdir (`root` is made absolute; the others follow `_LAYOUT`)."""
  root: str
  checkpoints: str = dataclasses.field(init=False)
  corrupt: str = dataclasses.field(init=False)
  averaged: str = dataclasses.field(init=False)
  config_json: str = dataclasses.field(init=False)
  model_config_json: str = dataclasses.field(init=False)
  metrics_jsonl: str = dataclasses.field(init=False)
  tensorboard: str = dataclasses.field(init=False)
  log: str = dataclasses.field(init=False)
  two_model_vocab: str = dataclasses.field(init=False)
  marian_files: str = dataclasses.field(init=False)

  def __post_init__(self):
    root = os.path.abspath(os.fspath(self.root))
    object.__setattr__(self, 'root', root)
    for name, path in _LAYOUT.items():
      object.__setattr__(self, name, os.path.join(root, path))

  def _path(self, *names: str) -> str:
    return os.path.join(self.root, *names)

  def translations(self, label: str, step: int) -> str:
    """Where an evaluation labelled `label` at `step` writes what it decoded."""
    return self._path('translations', f'{label}_step{step}.txt')

  def vocab_path(self, configured: str = '') -> str:
    """The vocabulary: `configured` (config.vocab_path) if set, else `<workdir>/spm.model`
    (or an imported model's two-model vocabulary, where it has one)."""
    if configured:
      return configured
    imported = os.path.exists(self.two_model_vocab)
    return self.two_model_vocab if imported else self._path('spm.model')

  def saved_config(self) -> dict[str, Any]:
    """The training config a run wrote to config.json ({} if there is none)."""
    return read_json(self.config_json) if os.path.exists(self.config_json) else {}

  def saved_vocab_path(self) -> str:
    """The vocabulary a finished run used: `vocab_path` of its config.json (if any)."""
    return self.vocab_path(self.saved_config().get('vocab_path') or '')

  def adopt_vocabulary(self, other: 'Workdir', configured: str = '') -> None:
    """Copy the vocabulary `other` (a finished or imported run) used to this run's default
    place (spm.model, or the two-model file for an imported one), unless config.vocab_path
    names one (`configured`) or the run already has one."""
    source = other.saved_vocab_path()
    imported = source == other.two_model_vocab
    path = self.two_model_vocab if imported else self._path('spm.model')
    if configured or os.path.exists(self.vocab_path()):
      return
    os.makedirs(self.root, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)

  def steps(self) -> list[int]:
    """Steps with a finalized directory under checkpoints/ (none if it does not exist)."""
    directory = self.checkpoints
    return [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []

  def save_failure(self, step: int, cause: str) -> str:
    """One line for a checkpoint save that failed: the step and path being written,
    `cause`, and the last complete step (where a rerun resumes)."""
    done = [s for s in self.steps() if s != step]
    last = (f'the last complete checkpoint is step {max(done)} '
            f'({self.checkpoints}/{max(done)}), where a rerun resumes'
            if done else 'no checkpoint is complete yet')
    return f'cannot write checkpoint step {step} to {self.checkpoints}/{step}: {cause}; {last}'

  def write_config(self, config: Any) -> None:
    """Write the training ConfigDict to config.json."""
    os.makedirs(self.root, exist_ok=True)
    with open(self.config_json, 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))

  def save_model_config(self, cfg: TransformerConfig) -> str:
    """Write model_config.json (atomically); returns its path."""
    write_json_atomic(self.model_config_json, model_config_to_dict(cfg))
    return self.model_config_json

  def load_model_config(self) -> TransformerConfig:
    """Read model_config.json."""
    return model_config_from_dict(read_json(self.model_config_json), source=self.model_config_json)


def model_config_to_dict(cfg: TransformerConfig) -> dict[str, Any]:
  """TransformerConfig -> JSON-able dict (dtypes as names, e.g. 'bfloat16'; the
  `model_config.LATER_FIELDS` only where they differ from their defaults)."""
  values = dataclasses.asdict(cfg)
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
  for key in LATER_FIELDS:
    if values[key] == defaults[key]:
      del values[key]
  for key in _DTYPE_FIELDS:
    values[key] = jnp.dtype(values[key]).name
  return values


def model_config_from_dict(values: Mapping[str, Any],
                           source: str = 'model config') -> TransformerConfig:
  """Inverse of `model_config_to_dict`; `source` names the origin in error messages."""
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise WorkdirError(f'{source}: unknown TransformerConfig key(s) {unknown}')
  values = dict(values)
  for key in _DTYPE_FIELDS:
    if key in values:
      try:
        values[key] = getattr(jnp, jnp.dtype(values[key]).name)
      except TypeError:
        raise WorkdirError(f'{source}: {key}={values[key]!r} is not a dtype name') from None
  try:
    return TransformerConfig(**values)
  except (TypeError, ValueError) as e:
    raise WorkdirError(f'{source}: {e}') from None


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes (used for the vocabulary)."""
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  except OSError as e:
    raise WorkdirError(f'{path}: cannot read ({e.strerror})') from None
  return digest.hexdigest()


def read_json(path: str) -> dict[str, Any]:
  """A JSON file's value; WorkdirError naming the file (and line) if unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path}:{e.lineno}: invalid JSON ({e.msg})') from None
  except OSError as e:
    raise WorkdirError(f'{path}: cannot read ({e.strerror})') from None


def write_json_atomic(path: str, value: Any) -> None:
  """Write `value` as sorted, indented JSON via a temporary file and a rename."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
