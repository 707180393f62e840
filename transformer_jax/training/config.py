"""The training config: its schema (every key's default, rule and role), validation, loading.

Config files (`configs/*.py`) return `default_config()` with some values changed; importing
this module loads only `ml_collections` (no training code). Each key is declared once, in
`_SCHEMA`: its default, the rule a value must satisfy (None: any value of the default's
type) and whether it is part of the training data's identity (`DATA_KEYS`: a checkpoint's
data-iterator position only fits an input pipeline built with the same values). The
model's keys (`config.model`) are `TransformerConfig`'s fields, with its defaults and its
checks. A renamed key (`RENAMED`) is refused with its new name.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import os
import typing
from typing import Any, Callable, Mapping, NamedTuple, Optional

import ml_collections
from ml_collections.config_dict import placeholder

from transformer_jax.parsing.linearize import LINEARIZATIONS


class Rule(NamedTuple):
  """What a value must satisfy, said in words for the error message; `numeric`: the value
  must also be a number."""
  words: str
  check: Callable[[Any], bool]
  numeric: bool = True


def one_of(*choices: str) -> Rule:
  """The rule of a value that must be one of `choices`."""
  return Rule(f'one of {", ".join(map(repr, choices))}', lambda v: v in choices, False)


POSITIVE = Rule('> 0', lambda v: v > 0)
NON_NEGATIVE = Rule('>= 0', lambda v: v >= 0)
DATA, RUN = True, False  # the key is / is not part of the training data's identity

# (key, default, rule, data identity): the one place a top-level key is declared.
_SCHEMA: tuple[tuple[str, Any, Optional[Rule], bool], ...] = (
    # Data (transformer_jax.training.input_pipeline; sources in transformer_jax.training.sources).
    ('task', 'translation', None, RUN),  # tasks.TASKS: 'translation' | 'parsing' (its hooks)
    # Translation: 'bible' (embedded EN-ES corpus) | 'tfds' | 'text'; parsing: 'craft'.
    ('dataset', 'tfds', None, DATA),
    # Parsing: how a tree is written as a target (parsing.linearize): 'xx' (the paper's word
    # slots) | 'tags' (POS tags in their place) | 'words' (the words themselves).
    ('linearization', 'xx', one_of(*LINEARIZATIONS), DATA),
    ('tfds_name', 'wmt14_translate/de-en', None, DATA),
    ('tfds_data_dir', '', None, RUN),  # '': tfds default; the dataset must be prepared
    # Split names for 'tfds' ('train[:1%]' slicing works), 'bible' and 'craft' (train, dev, test).
    ('train_split', 'train', None, DATA),
    ('eval_split', 'validation', None, RUN),
    ('test_split', 'test', None, RUN),
    # Feature names of the pair: en/de/fr for WMT, en/es for the Bible (either direction).
    ('source_lang', 'en', None, DATA),
    ('target_lang', 'de', None, DATA),  # also BLEU's tokenizer: sacreBLEU's zh / ja / ko ones
    # 'text' files, one sentence a line (.gz decompressed); a TSV (source<TAB>target) is
    # given as *_source with *_target empty.
    *((f'{split}_{side}', '', None, RUN) for split in ('train', 'eval', 'test')
      for side in ('source', 'target')),
    ('vocab_path', '', None, RUN),  # '': <workdir>/spm.model, trained on first use
    ('vocab_size', 37000, POSITIVE, RUN),  # shared source-target vocabulary (paper §5.1)
    ('vocab_model_type', 'bpe', None, RUN),  # 'unigram' | 'bpe'
    ('vocab_max_sentences', 1_000_000, None, RUN),  # sentences sampled to train it
    ('max_len', 256, POSITIVE, DATA),  # train: tokens per side incl. EOS; packed row length
    ('max_eval_len', 256, POSITIVE, RUN),  # eval/test: tokens per side, the padded length
    ('batching', 'tokens', None, DATA),  # 'pack' | 'tokens'
    ('batch_size', 64, POSITIVE, DATA),  # global rows per batch with 'pack' (and eval)
    # 'pack': examples packed per window (a row closes at a window's end); the first batch
    # waits for a whole window, so a smaller one starts sooner on a small corpus.
    ('pack_window', 4096, POSITIVE, DATA),
    ('tokens_per_batch', 25000, POSITIVE, DATA),  # source (and target) tokens a step (§5.1)
    ('bucket_boundaries', (), None, DATA),  # 'tokens' bucket lengths; (): geometric from 8
    ('shuffle_buffer', 100_000, POSITIVE, DATA),
    ('seed', 0, None, DATA),  # shuffling, SentencePiece sampling, initialisation
    # Subword regularisation of the train split (Kudo 2018), in the tf.data graph: > 0 samples
    # a segmentation every pass (unigram: among the spm_nbest_size best, -1 all, inverse
    # temperature alpha; BPE: dropout alpha). Eval, test and decoding use the best one.
    ('spm_alpha', 0.0, NON_NEGATIVE, RUN),
    ('spm_nbest_size', -1, None, RUN),
    # Fine-tuning: a training workdir whose parameters (averaged if present) start this run,
    # with a fresh optimizer and step 0; same model and vocabulary (adopted if none is set).
    ('init_from', '', None, RUN),
    # Optimisation (paper §5.3-5.4).
    ('warmup_steps', 4000, POSITIVE, RUN),
    ('learning_rate_multiplier', 1.0, POSITIVE, RUN),
    ('label_smoothing', 0.1, Rule('in [0, 1)', lambda v: 0 <= v < 1), RUN),
    # The loss over chunks of ~this many tokens of the global batch (transformer_jax.training.loss:
    # no float32 [tokens, V] logits); 0: the whole batch at once.
    ('loss_chunk_tokens', 8192, NON_NEGATIVE, RUN),
    ('cooldown_steps', 0, NON_NEGATIVE, RUN),  # > 0: lr decays linearly toward 0 over the last ones
    ('adam_b1', 0.9, None, RUN),
    ('adam_b2', 0.98, None, RUN),
    ('adam_eps', 1e-9, None, RUN),
    ('grad_clip_norm', 0.0, NON_NEGATIVE, RUN),  # 0: no clipping
    ('flatten_optimizer', False, None, RUN),  # Adam over one flat buffer (data parallel only)
    ('grad_accum_steps', 1, POSITIVE, RUN),  # micro-batches per optimizer step
    ('num_train_steps', 100_000, NON_NEGATIVE, RUN),
    ('train_minutes', 0.0, NON_NEGATIVE, RUN),  # training budget (evaluation excluded); 0: none
    # Evaluation, logging, checkpoints.
    ('log_every_steps', 100, POSITIVE, RUN),
    ('eval_every_steps', 1000, POSITIVE, RUN),
    ('eval_every_minutes', 0.0, NON_NEGATIVE, RUN),  # also every so many training minutes
    ('num_eval_batches', -1, Rule('-1 (all) or > 0', lambda v: v == -1 or v > 0), RUN),
    # Sentences decoded at each evaluation (translation: BLEU; parsing: F1); 0: none, -1: all.
    ('decode_sentences', 500, Rule('-1 (all) or >= 0', lambda v: v >= -1), RUN),
    ('decode_split', 'eval', None, RUN),  # 'eval' | 'test': the split they come from
    ('parse_constrained', True, None, RUN),  # parsing: decode under the tree automaton
    ('decode_batch_size', 32, POSITIVE, RUN),  # sentences per decoding batch at evaluation
    ('max_decode_len', 256, POSITIVE, RUN),
    ('save_every_steps', 1000, POSITIVE, RUN),
    ('keep_checkpoints', 5, None, RUN),
    ('async_checkpointing', True, None, RUN),  # False on CPU hosts: the writer takes cores
    ('average_last', 5, NON_NEGATIVE, RUN),  # checkpoints averaged at the end; 0: none
    ('mesh_shape', (-1, 1, 1), None, RUN),  # (data, fsdp, tensor); per slice with dcn
    ('dcn_mesh_shape', (), None, RUN),  # multi-slice TPU: e.g. (2, 1, 1); (): one slice
    ('peak_tflops', 0.0, None, RUN),  # device peak for MFU; 0: from metrics.PEAK_TFLOPS
    ('progress_bar', True, None, RUN),
)
DEFAULTS = {key: default for key, default, _, _ in _SCHEMA}  # all immutable values
DATA_KEYS = tuple(key for key, _, _, data in _SCHEMA if data)
# Data keys added after checkpoints already existed: recorded only when not at their
# default, which is what those checkpoints' pipelines did, so that they still resume.
LATER_DATA_KEYS = ('pack_window',)
# Keys that were renamed: an old name is refused with the new one.
RENAMED = {'num_bleu_sentences': 'decode_sentences', 'bleu_split': 'decode_split'}
DTYPES = ('float32', 'bfloat16', 'float16')


def default_config() -> ml_collections.ConfigDict:
  """The full training ConfigDict with the paper's recipe as defaults (base, WMT14 EN→DE).

  Every key a config may set is here; `validate_config` rejects any other. `model` holds
  `TransformerConfig`'s fields and defaults (dtypes by name) but the vocabulary sizes,
  which come from the tokenizer.
  """
  c = ml_collections.ConfigDict(DEFAULTS)
  c.model = ml_collections.ConfigDict(_model_defaults())
  return c


def _model_defaults() -> dict[str, Any]:
  """`TransformerConfig`'s defaults as config values: dtypes by name, None as a typed
  placeholder."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from transformer_jax.model_config import TransformerConfig  # pylint: disable=g-import-not-at-top
  hints = typing.get_type_hints(TransformerConfig)
  values = {}
  for field in dataclasses.fields(TransformerConfig):
    if field.name in ('vocab_size', 'target_vocab_size'):
      continue
    if field.name in ('dtype', 'param_dtype'):
      values[field.name] = jnp.dtype(field.default).name
    elif field.default is None:  # Optional[X]: a placeholder of type X
      values[field.name] = placeholder(typing.get_args(hints[field.name])[0])
    else:
      values[field.name] = field.default
  return values


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file, `path.py` or `path.py:arg` (as `--config=` takes).

  Raises ValueError naming the file if it is missing, lacks `get_config`, or has
  unknown keys.
  """
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'config file {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path!r} has no get_config() function')
  config = module.get_config(arg) if arg else module.get_config()
  validate_config(config)
  return config


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Set `config.<key>` (dotted, e.g. 'model.dtype') from command-line text, parsed as the
  key's type: bools from true/false/1/0, tuples as Python literals ('' is ()), numbers and
  strings as such. Raises KeyError for an unknown key, ValueError for an unparsable value."""
  *parents, name = key.split('.')
  node = functools.reduce(lambda c, k: c[k], parents, config)
  if not hasattr(node, 'get_type') or name not in node:
    raise KeyError(_unknown_key_hint(key))
  kind = node.get_type(name)
  if kind is bool:
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'--config.{key}={text!r}: expected true or false')
    value: Any = text.lower() in ('true', '1')
  elif kind in (tuple, list):
    value = tuple(ast.literal_eval(text)) if text.strip() else ()
  else:
    try:
      value = kind(text)
    except ValueError:
      raise ValueError(f'--config.{key}={text!r}: expected a {kind.__name__}') from None
  node[name] = value


def _unknown_key_hint(key: str) -> str:
  """'key', or for a renamed key 'key' (renamed: config.<new>)."""
  new = RENAMED.get(key)
  return repr(key) + (f' (renamed: config.{new})' if new else '')


def _unknown_keys(config: Mapping[str, Any], reference: Mapping[str, Any],
                  prefix: str = '') -> list[str]:
  unknown = []
  for key in config.keys():
    if key not in reference:
      unknown.append(prefix + key)
    elif hasattr(reference[key], 'keys'):
      unknown += _unknown_keys(config[key], reference[key], f'{prefix}{key}.')
  return unknown


def validate_config(config: Mapping[str, Any]) -> None:
  """Raise ValueError naming every key `default_config` does not know, or every numeric
  value out of its range (e.g. batch_size <= 0, warmup_steps 0, dropout_rate >= 1, or
  max_len / max_eval_len longer than model.max_len)."""
  unknown = _unknown_keys(config, default_config())
  if unknown:
    raise ValueError(f"unknown config key(s) {', '.join(map(_unknown_key_hint, unknown))}; "
                     'see transformer_jax.training.config for the valid keys')
  get = lambda key: functools.reduce(lambda c, k: c[k], key.split('.'), config)
  bad = [f'config.{key}={config[key]!r} must be {rule.words}' for key, _, rule, _ in _SCHEMA
         if rule and not ((not rule.numeric or isinstance(config[key], (int, float)))
                          and rule.check(config[key]))]
  if not bad:
    try:  # TransformerConfig's own checks, before the (slow) data set-up
      model_config(config, config['vocab_size'])
    except ValueError as e:
      bad = [str(e)]
  if not bad:  # the lengths are positive numbers: do they fit the position table?
    bad = [f'config.{key}={config[key]} exceeds config.model.max_len={get("model.max_len")}, '
           'the positions the model has' for key in ('max_len', 'max_eval_len')
           if config[key] > get('model.max_len')]
  if bad:
    raise ValueError('; '.join(bad))


def model_config(config: Any, vocab_size: int) -> Any:
  """The `TransformerConfig` of `config.model` and the tokenizer's vocabulary size; a value
  it refuses is a ValueError naming the config.model key. (Imports the model: JAX.)"""
  import jax.numpy as jnp
  from transformer_jax.model import TransformerConfig
  values = dict(config.model.to_dict() if hasattr(config.model, 'to_dict') else config.model)
  for key in ('dtype', 'param_dtype'):
    if values[key] not in DTYPES:
      raise ValueError(f'config.model.{key}={values[key]!r}: expected one of {sorted(DTYPES)}')
    values[key] = getattr(jnp, values[key])
  try:
    return TransformerConfig(vocab_size=vocab_size, **values)
  except (ValueError, TypeError) as e:
    raise ValueError(f'config.model: {e}') from None


def data_identity(config: Mapping[str, Any]) -> dict[str, Any]:
  """The values of `DATA_KEYS` (stored with every checkpoint, compared on resume), less
  `LATER_DATA_KEYS` at their defaults."""
  return {key: config[key] for key in DATA_KEYS
          if key not in LATER_DATA_KEYS or config[key] != DEFAULTS[key]}

