"""Inference from a training workdir: load the model and its vocabulary, translate lines.

`load_model(workdir)` -> `LoadedModel` (a `decoding.Model` and its vocabulary);
`load_ensemble(workdirs)` -> one `LoadedModel` of several models sharing a vocabulary (a
`decoding.Ensemble`: the model-or-ensemble choice is made here, once);
`make_decode_fn(step, Search(...), mesh)` -> a function from [B, S] numpy source ids to a
numpy `decoding.Result`, the one place where decoding meets devices;
`make_translate_fn(model, beam_size=..., mesh=...)` -> [B, S] source ids to [B, L] outputs; `translate_lines(lines, fn, vocab, ...)` batches sentences by length
(fixed shapes: `batch_size` rows, source length rounded up to a power of two, so that few
programs are compiled; `encode_lines`, `length_batches`) and returns one output per line,
in order; a line with no content (`source_ids` None: blank, zero-width or format
characters only) gives '' without reaching the model, and a BOM starting a line is
dropped. The translate and score CLIs (through `hypotheses`), `visualize` and training's
evaluation (`tasks`) all use these. No TensorFlow, no flags.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import regex
from flax import linen as nn
from jax.sharding import Mesh
from tqdm import tqdm

from transformer_jax import checkpoint, compatibility, decoding, sharding
from transformer_jax.checkpoint import CheckpointError
from transformer_jax.model import Transformer, TransformerConfig
from transformer_jax.model_config import EOS_ID, RUNTIME_FIELDS, TRAINING_FIELDS
from transformer_jax.tokenizer import INVISIBLE, Vocabulary, load_vocabulary as read_vocabulary
from transformer_jax.workdir import (Workdir, WorkdirError, file_sha256,
                                     model_config_from_dict, model_config_to_dict, read_json)

MIN_BUCKET = 16
BOM = '\ufeff'
# Text with nothing to translate: white space and invisible characters.
_NO_CONTENT = regex.compile(rf'[\p{{White_Space}}{INVISIBLE}]*')

# Source ids [B, S] (int32, 0-padded) -> output ids [B, L].
TranslateFn = Callable[[np.ndarray], np.ndarray]


class InferenceError(WorkdirError):
  """A workdir or vocabulary that cannot be used for inference (one-line message)."""


# (source ids [B, S], PRNG key or None) -> numpy Result of the B rows.
DecodeFn = Callable[[np.ndarray, Optional[jax.Array]], decoding.Result]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What a training workdir (or several: an ensemble) provides for inference: the
  `decoding.Model` or `decoding.Ensemble` to decode and score with, and its vocabulary."""
  decoder: decoding.ModelOrEnsemble
  vocab: Vocabulary

  @property
  def max_len(self) -> int:
    """The longest source or target the model (every member) has positions for."""
    return self.decoder.max_len


def load_for_inference(workdir: str) -> tuple[Any, TransformerConfig, str]:
  """(params as numpy arrays, TransformerConfig, vocabulary path) of a training workdir.

  Uses `<workdir>/averaged` if present, else the latest readable checkpoint
  (`checkpoint.load_params`). The model config comes from the checkpoint;
  `model_config.json` and the vocabulary file must agree with it.
  """
  wd = Workdir(workdir)
  params, metadata, where = checkpoint.load_params(wd.root)
  if 'model_config' in metadata:
    cfg = model_config_from_dict(metadata['model_config'], source=f'{where} metadata')
    if os.path.exists(wd.model_config_json) and (diffs := compatibility.mismatch(
        metadata, {'model_config': read_json(wd.model_config_json)})):
      raise CheckpointError(f'{wd.model_config_json} disagrees with {where}: {diffs[0]}')
  else:
    cfg = wd.load_model_config()
  ones = jnp.ones((1, 1), jnp.int32)
  expected = jax.eval_shape(lambda: nn.meta.unbox(
      Transformer(cfg).init(jax.random.key(0), ones, ones)['params']))
  if diffs := compatibility.shape_mismatch(params, expected):
    raise CheckpointError(f'{where} does not fit the model of its config: {"; ".join(diffs)}')
  vocab_path = wd.saved_vocab_path()
  if 'vocab_sha256' in metadata and file_sha256(vocab_path) != metadata['vocab_sha256']:
    raise CheckpointError(f'{vocab_path} is not the vocabulary {where} was trained with '
                          '(SHA-256 differs)')
  return params, cfg, vocab_path


def load_vocabulary(path: str, config: TransformerConfig) -> Vocabulary:
  """The vocabulary at `path` (a SentencePiece model, or an imported model's two-model
  vocabulary), checked against the model's ids and vocabulary size."""
  try:
    with open(path, 'rb') as f:
      vocab = read_vocabulary(f.read())
  except (OSError, RuntimeError, ValueError) as e:
    raise InferenceError(f'cannot load the vocabulary {path}: {str(e).splitlines()[0]}') from None
  if vocab.vocab_size > min(config.vocab_size, config.output_vocab_size):
    raise InferenceError(f'{path} has {vocab.vocab_size} pieces but the model only '
                         f'{config.vocab_size}')
  return vocab


def load_model(workdir: str, mesh: Optional[Mesh] = None, *,
               task: Optional[str] = None) -> LoadedModel:
  """Params (on the default device, or replicated on `mesh`), config and vocabulary of a
  training workdir (averaged if present); with `task`, a workdir of that task only
  (`check_task`)."""
  return load_ensemble([workdir], mesh, task=task)


def load_ensemble(workdirs: Sequence[str], mesh: Optional[Mesh] = None, *,
                  task: Optional[str] = None) -> LoadedModel:
  """`load_model` of one workdir, or an `Ensemble` of several (members may differ in
  size), with the first one's vocabulary. InferenceError naming both workdirs if a
  member's vocabulary file differs (SHA-256) from the first one's, or (with `task`) if a
  workdir was trained for another task."""
  members = []
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise InferenceError(f'workdir {workdir} does not exist')
    if task is not None:
      check_task(workdir, task)
    members.append(load_for_inference(workdir))
  vocab_path = members[0][2]
  for workdir, (_, _, path) in zip(workdirs[1:], members[1:]):
    if file_sha256(path) != file_sha256(vocab_path):
      raise InferenceError(f'ensemble members need one vocabulary: {workdir} has another '
                           f'than {workdirs[0]} ({path} and {vocab_path} differ)')
  try:
    models = tuple(decoding.Model(params, config) for params, config, _ in members)
    step = models[0] if len(models) == 1 else decoding.Ensemble(models)
  except ValueError as e:  # the members' embedding sizes differ
    raise InferenceError(f'{", ".join(workdirs)}: {e}') from None
  return LoadedModel(place(step, mesh), load_vocabulary(vocab_path, members[0][1]))


def check_task(workdir: str, task: str) -> None:
  """InferenceError unless `workdir` was trained for `task` ('translation', 'parsing'): the
  `task` of its config.json, 'translation' where it has none (older runs, imported
  models)."""
  wd = Workdir(workdir)
  saved = wd.saved_config().get('task')
  if (saved or 'translation') != task:
    said = f'"task": "{saved}" in' if saved else 'no "task" in'
    raise InferenceError(f'{workdir} holds a {saved or "translation"} model ({said} '
                         f'{wd.config_json}), not a {task} one')


def place(tree: Any, mesh: Optional[Mesh]) -> Any:
  """Arrays (e.g. a step's params) on the default device, or replicated on `mesh` (no
  copy if they are there already)."""
  return jax.device_put(tree, None if mesh is None else sharding.replicated(mesh))


def make_decode_fn(step: decoding.Step, options: decoding.Search,
                   mesh: Optional[Mesh] = None) -> DecodeFn:
  """A function decoding a [B, S] numpy batch with `decoding.search` (a PRNG key for
  sampling) -> the numpy Result of its B rows.

  With `mesh`, the step is replicated on it and each batch is split over its batch axes
  and decoded per device (sentences are decoded independently), completed with empty rows
  where B does not divide; without, the batch goes where the step's arrays are.
  """
  if mesh is not None:
    step = place(step, mesh)

  def decode_fn(inputs: np.ndarray, rng: Optional[jax.Array] = None) -> decoding.Result:
    batch = inputs if mesh is None else sharding.shard_batch({'inputs': inputs}, mesh)['inputs']
    result = decoding.search(step, batch, options, rng=rng, mesh=mesh)
    return jax.tree.map(lambda x: np.asarray(x)[:len(inputs)], result)
  return decode_fn


def make_translate_fn(model: LoadedModel, *, beam_size: int = 4, alpha: float = 0.6,
                      max_extra_len: int = 50, mesh: Optional[Mesh] = None) -> TranslateFn:
  """A function translating a [B, S] numpy batch to its best outputs [B, L]: beam search,
  or greedy if beam_size is 1 (`make_decode_fn`)."""
  decode_fn = make_decode_fn(model.decoder, decoding.Search(
      beam_size=beam_size, alpha=alpha, max_extra_len=max_extra_len), mesh)
  return lambda inputs: decode_fn(inputs).best


def bucket_length(length: int, max_len: int) -> int:
  """Padded source length: the next power of two >= `length` (at least 16), <= max_len."""
  return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), max_len)


def fit_source(ids: Sequence[int], max_len: int) -> list[int]:
  """Source ids (EOS last) cut to at most `max_len` tokens, keeping the EOS."""
  return list(ids) if len(ids) <= max_len else list(ids[:max_len - 1]) + list(ids[-1:])


def source_ids(line: str, vocab: Any) -> Optional[list[int]]:
  """The ids `vocab` encodes `line` to (EOS last), or None if it has nothing to translate:
  only white space, control or default-ignorable characters, or no token before the EOS.
  A byte-order mark starting the line (a file's signature) is dropped first."""
  line = line.removeprefix(BOM)
  if _NO_CONTENT.fullmatch(line):
    return None
  ids = vocab.encode(line)
  return None if list(ids) == [EOS_ID] else ids


def encode_lines(lines: Sequence[str], vocab: Any, max_len: int, *, skip_empty: bool = True,
                 target: bool = False, what: str = 'lines') -> dict[int, list[int]]:
  """Line number -> the line's ids (EOS last), cut to `max_len` tokens keeping the EOS
  (with one warning naming the first cut line). Sources: lines with
  no content are left out (`skip_empty`: `source_ids` None) or encoded as they are
  (`vocab.encode`; EOS alone). `target`: the lines are targets, all encoded with
  `vocab.encode_target` (an imported model's target SentencePiece model)."""
  encoded, cut = {}, []
  for i, line in enumerate(lines):
    if target:
      ids = vocab.encode_target(line)
    else:
      ids = source_ids(line, vocab) if skip_empty else vocab.encode(line)
    if ids is not None:
      encoded[i] = fit_source(ids, max_len)
      if len(ids) > max_len:
        cut.append(i)
  if cut:
    logging.warning('%d of %d %s have more than %d tokens and were cut to that length '
                    '(first: line %d)', len(cut), len(lines), what, max_len, cut[0] + 1)
  return encoded


def length_batches(items: dict[int, tuple[list[int], ...]], batch_size: int, max_len: int,
                   progress: bool = True) -> Iterator[tuple[list[int], list[np.ndarray]]]:
  """Items (key -> one or more id sequences, e.g. a source and its target) sorted by length
  -> batches (keys, one [batch_size, W] int32 array per sequence, 0-padded, W its longest
  length bucketed by `bucket_length`): fixed shapes, so that few programs are compiled.
  A tqdm progress bar on stderr counts the items."""
  order = sorted(items, key=lambda i: [len(ids) for ids in items[i]])
  with tqdm(total=len(order), file=sys.stderr, unit='sent', disable=not progress) as bar:
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      arrays = []
      for field in range(len(items[rows[0]])):
        width = bucket_length(max(len(items[i][field]) for i in rows), max_len)
        batch = np.zeros((batch_size, width), np.int32)
        for r, i in enumerate(rows):
          batch[r, :len(items[i][field])] = items[i][field]
        arrays.append(batch)
      yield rows, arrays
      bar.update(len(rows))


def translate_lines(lines: Sequence[str], translate_fn: TranslateFn, vocab: Any, *,
                    batch_size: int, max_source_len: int, progress: bool = True) -> list[str]:
  """Translate `lines` (one sentence each) -> one output per line, in the input order.

  `vocab` has `encode(str) -> ids` (EOS appended) and `decode(ids) -> str`. Lines with
  no content (`source_ids` None: blank, zero-width characters only, ...) give empty
  outputs without touching the model; longer sources are cut to `max_source_len` tokens
  (EOS kept), with a warning. Batches always have `batch_size` rows.
  """
  outputs = [''] * len(lines)
  encoded = encode_lines(lines, vocab, max_source_len)
  for rows, (batch,) in length_batches({i: (ids,) for i, ids in encoded.items()}, batch_size,
                                       max_source_len, progress):
    for i, ids in zip(rows, translate_fn(batch)):
      outputs[i] = vocab.decode(ids)
  return outputs


def load_initial_params(init_from: str, cfg: TransformerConfig,
                        vocab_path: Optional[str]) -> Any:
  """Params (numpy) of the training workdir `init_from` to start a fine-tuning run with.

  Raises CheckpointError (naming config.init_from) if its model differs from `cfg` in any
  field but dropout, compute dtype and runtime options, or if `vocab_path` (None: no
  vocabulary, synthetic data) is not the vocabulary it was trained with.
  """
  if not os.path.isdir(init_from):
    raise CheckpointError(f'config.init_from: {init_from} is not a directory')
  params, theirs, their_vocab = load_for_inference(init_from)
  mine, other = model_config_to_dict(cfg), model_config_to_dict(theirs)
  diffs = [f'{key}: {init_from} has {other[key]!r}, this run {mine[key]!r}' for key in mine
           if key not in RUNTIME_FIELDS | TRAINING_FIELDS and mine[key] != other[key]]
  if diffs:
    raise CheckpointError(f'config.init_from: the model differs ({"; ".join(diffs[:3])})')
  if vocab_path is not None and file_sha256(vocab_path) != file_sha256(their_vocab):
    raise CheckpointError(f'config.init_from: {init_from} was trained with {their_vocab}, '
                          f"not this run's vocabulary {vocab_path} (SHA-256 differs); leave "
                          'config.vocab_path empty to use its vocabulary')
  return params

