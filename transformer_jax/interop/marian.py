"""Marian (OPUS-MT) models in Transformers' `MarianMTModel` format, in and out.

`import_marian(hf_dir, workdir)` turns a `save_pretrained` directory (config.json,
model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json) into a workdir
that inference loads: the parameters as `<workdir>/averaged`, `model_config.json`, the
two-model vocabulary (`tokenizer.TwoModelVocabulary`) and the original Transformers JSON
files. `export_marian(workdir, out_dir)` writes a post-LN model of this library in that
format, for Transformers (`MarianMTModel.from_pretrained`) and CTranslate2's converter.
Nothing is downloaded; safetensors are read and written with numpy (torch is imported only
to read a `pytorch_model.bin`).

How the two models line up (both post-LN, with biases on every projection):
  * Ids: Marian has EOS 0 and pad (= decoder start) last; this library pad = start 0,
    EOS 1, and its decoding and input code rely on them. Import permutes the vocabulary
    rows to [pad, EOS, the others in Marian's order] (for OPUS-MT's EOS 0, <unk> 1, pad
    last: Marian id m -> (m + 1) mod V, which also puts <unk> on 2 as here) and records
    the order in the vocabulary file; export inverts it exactly. An own model goes out
    with the inverse of that rotation (pad last, as CTranslate2's Marian loader expects).
  * Sinusoids: Marian puts the sines in the first half of the features and the cosines in
    the second, the paper interleaves them. Rather than a second layout, the converter
    permutes the model dimension: halves[j] = interleaved[PERM[j]] on every parameter's
    d_model axis. Attention, the FFN and LayerNorm are equivariant under it, so the
    permuted model computes the same function, and any own sinusoidal model exports.
  * Marian's decoder starts from a zero vector (Transformers: a zero pad row that is never
    trained): `zero_pad_embedding`, set on import when the pad row is zero. SiLU FFNs,
    embedding scaling, the logits bias and LayerNorm eps 1e-5 are `TransformerConfig`
    options.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from flax import linen as nn

from transformer_jax import checkpoint, compatibility, inference
from transformer_jax.model import ACTIVATIONS, Transformer, TransformerConfig
from transformer_jax.tokenizer import TwoModelVocabulary, load_vocabulary
from transformer_jax.workdir import Workdir

Params = Any
SPM_FILES = ('source.spm', 'target.spm')
# Transformers' JSON files of an imported model, kept in the workdir (`marian_files`).
JSON_FILES = ('config.json', 'generation_config.json', 'tokenizer_config.json',
              'special_tokens_map.json')
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which MarianMTModel uses.


class ConversionError(ValueError):
  """A directory or model that cannot be converted; reported as one line."""


# ------------------------------------------------------------------------ config


def config_from_hf(hf: Mapping[str, Any], source: str) -> TransformerConfig:
  """TransformerConfig of a Marian config.json dict; ConversionError naming an option this
  library has no equivalent for. Training-only options (layer drop, activation dropout)
  are not carried over."""
  if hf.get('model_type') != 'marian':
    raise ConversionError(f'{source} is not a Marian checkpoint: model_type is '
                          f'{hf.get("model_type")!r}, not \'marian\'')
  vocab_size = hf.get('vocab_size')
  unsupported = {
      'share_encoder_decoder_embeddings': hf.get('share_encoder_decoder_embeddings') is False,
      'tie_word_embeddings': hf.get('tie_word_embeddings') is False,
      'decoder_vocab_size': hf.get('decoder_vocab_size') not in (None, vocab_size),
      'decoder_attention_heads': hf.get('decoder_attention_heads')
                                 != hf.get('encoder_attention_heads'),
      'decoder_ffn_dim': hf.get('decoder_ffn_dim') != hf.get('encoder_ffn_dim'),
      'activation_function': hf.get('activation_function') not in ACTIVATIONS,
      'decoder_start_token_id': hf.get('decoder_start_token_id') != hf.get('pad_token_id'),
  }
  for option, bad in unsupported.items():
    if bad:
      raise ConversionError(f'{source}: unsupported architecture option {option}='
                            f'{hf.get(option)!r}')
  try:
    return TransformerConfig(
        vocab_size=vocab_size, d_model=hf['d_model'], d_ff=hf['encoder_ffn_dim'],
        num_heads=hf['encoder_attention_heads'], num_encoder_layers=hf['encoder_layers'],
        num_decoder_layers=hf['decoder_layers'], dropout_rate=hf.get('dropout', 0.1),
        attention_dropout_rate=hf.get('attention_dropout', 0.0),
        max_len=hf['max_position_embeddings'], layer_norm_epsilon=LAYER_NORM_EPSILON,
        activation=hf.get('activation_function', 'gelu'),
        scale_embedding=bool(hf.get('scale_embedding', False)), logits_bias=True,
        zero_pad_embedding=True)
  except KeyError as e:
    raise ConversionError(f'{source} has no {e.args[0]!r}') from None
  except (TypeError, ValueError) as e:
    raise ConversionError(f'{source}: {e}') from None


def config_to_hf(cfg: TransformerConfig, pad_id: int, eos_id: int) -> dict[str, Any]:
  """The Marian config.json values that describe `cfg` (ids in Marian's numbering)."""
  return {
      'model_type': 'marian', 'architectures': ['MarianMTModel'],
      'vocab_size': cfg.vocab_size, 'decoder_vocab_size': cfg.vocab_size,
      'd_model': cfg.d_model, 'encoder_ffn_dim': cfg.d_ff, 'decoder_ffn_dim': cfg.d_ff,
      'encoder_attention_heads': cfg.num_heads, 'decoder_attention_heads': cfg.num_heads,
      'encoder_layers': cfg.num_encoder_layers, 'decoder_layers': cfg.num_decoder_layers,
      'max_position_embeddings': cfg.max_len, 'activation_function': cfg.activation,
      'scale_embedding': cfg.scale_embedding, 'dropout': cfg.dropout_rate,
      'attention_dropout': cfg.attention_dropout_rate,
      'share_encoder_decoder_embeddings': True, 'tie_word_embeddings': True,
      'pad_token_id': pad_id, 'decoder_start_token_id': pad_id, 'eos_token_id': eos_id,
      'is_encoder_decoder': True}


def check_exportable(cfg: TransformerConfig) -> None:
  """ConversionError naming the first property of `cfg` that MarianMTModel cannot hold."""
  if cfg.pre_norm:
    raise ConversionError(
        'pre-LN models (model.pre_norm=True) cannot be exported: MarianMTModel is post-LN, '
        'and no Transformers seq2seq format holds this pre-LN model with its ids and '
        'sinusoids (MBart adds an embedding LayerNorm, Pegasus reserves 103 ids)')
  checks = {
      'positional': (cfg.positional == 'sinusoidal', "MarianMTModel has sinusoidal positions"),
      'share_embeddings': (cfg.share_embeddings, 'MarianMTModel is exported with one '
                           'embedding shared by source, target and logits'),
      'logits_via_embedding': (cfg.logits_via_embedding, 'the logits must reuse the '
                               'shared embedding'),
      'd_k': (cfg.qk_dim * cfg.num_heads == cfg.d_model, 'd_k must be d_model / num_heads'),
      'd_v': (cfg.v_dim * cfg.num_heads == cfg.d_model, 'd_v must be d_model / num_heads'),
  }
  for option, (ok, reason) in checks.items():
    if not ok:
      raise ConversionError(f'cannot export model.{option}={getattr(cfg, option)!r}: {reason}')


# ------------------------------------------------------------------------ tensors


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One Transformers tensor, its path in this library's params and its axis roles."""
  name: str
  path: tuple[str, ...]
  model_axes: tuple[int, ...] = ()  # Transformers axes over d_model (permuted)
  vocab_axis: Optional[int] = None  # Transformers axis over the vocabulary (permuted)


def _tensors(cfg: TransformerConfig) -> Iterator[_Tensor]:
  """Every MarianMTModel tensor of `cfg` (torch Linear weights are [out, in])."""
  def attention(hf: str, ours: tuple[str, ...]) -> Iterator[_Tensor]:
    for hf_name, name in (('q_proj', 'query'), ('k_proj', 'key'), ('v_proj', 'value')):
      yield _Tensor(f'{hf}.{hf_name}.weight', (*ours, name, 'kernel'), (1,))
      yield _Tensor(f'{hf}.{hf_name}.bias', (*ours, name, 'bias'))
    yield _Tensor(f'{hf}.out_proj.weight', (*ours, 'out', 'kernel'), (0,))
    yield _Tensor(f'{hf}.out_proj.bias', (*ours, 'out', 'bias'), (0,))

  def norm(hf: str, ours: tuple[str, ...]) -> Iterator[_Tensor]:
    yield _Tensor(f'{hf}.weight', (*ours, 'norm', 'scale'), (0,))
    yield _Tensor(f'{hf}.bias', (*ours, 'norm', 'bias'), (0,))

  def ffn(hf: str, ours: tuple[str, ...]) -> Iterator[_Tensor]:
    yield _Tensor(f'{hf}.fc1.weight', (*ours, 'ffn', 'wi', 'kernel'), (1,))
    yield _Tensor(f'{hf}.fc1.bias', (*ours, 'ffn', 'wi', 'bias'))
    yield _Tensor(f'{hf}.fc2.weight', (*ours, 'ffn', 'wo', 'kernel'), (0,))
    yield _Tensor(f'{hf}.fc2.bias', (*ours, 'ffn', 'wo', 'bias'), (0,))
    yield from norm(f'{hf}.final_layer_norm', (*ours, 'ffn_block'))

  yield _Tensor('final_logits_bias', ('decoder', 'logits_bias'), vocab_axis=1)
  yield _Tensor('model.shared.weight', ('source_embed', 'embedding'), (1,), vocab_axis=0)
  for i in range(cfg.num_encoder_layers):
    hf, ours = f'model.encoder.layers.{i}', ('encoder', f'layer_{i}')
    yield from attention(f'{hf}.self_attn', (*ours, 'self_attention'))
    yield from norm(f'{hf}.self_attn_layer_norm', (*ours, 'attention_block'))
    yield from ffn(hf, ours)
  for i in range(cfg.num_decoder_layers):
    hf, ours = f'model.decoder.layers.{i}', ('decoder', f'layer_{i}')
    yield from attention(f'{hf}.self_attn', (*ours, 'self_attention'))
    yield from norm(f'{hf}.self_attn_layer_norm', (*ours, 'self_attention_block'))
    yield from attention(f'{hf}.encoder_attn', (*ours, 'cross_attention'))
    yield from norm(f'{hf}.encoder_attn_layer_norm', (*ours, 'cross_attention_block'))
    yield from ffn(hf, ours)


def feature_permutation(d_model: int) -> np.ndarray:
  """PERM with halves[..., j] = interleaved[..., PERM[j]]: the sines (even features of the
  paper's table), then the cosines (odd ones)."""
  return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def marian_order(vocab_size: int, eos_id: int, pad_id: int) -> list[int]:
  """The Marian id of each of this library's ids: [pad, EOS, the others ascending]."""
  if pad_id == eos_id or not (0 <= pad_id < vocab_size and 0 <= eos_id < vocab_size):
    raise ConversionError(f'pad id {pad_id} and EOS id {eos_id} must differ and lie in '
                          f'[0, {vocab_size})')
  return [pad_id, eos_id] + [i for i in range(vocab_size) if i not in (pad_id, eos_id)]


def _param_shapes(cfg: TransformerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  ones = jnp.ones((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      Transformer(cfg).init(jax.random.key(0), ones, ones)['params']))
  return {tuple(k.key for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def _hf_shape(t: _Tensor, shape: tuple[int, ...], d_model: int) -> tuple[int, ...]:
  """The Transformers shape of `t`, whose parameter here has `shape`: attention kernels
  [N, H, D] / [D, N, H] are [N·H, D] / [D, N·H], their biases [N·H], the logits bias [1, V]."""
  size = int(np.prod(shape))
  if t.name == 'final_logits_bias':
    return (1, size)
  if len(shape) == 3:
    return (d_model, size // d_model) if t.path[-2] == 'out' else (size // d_model, d_model)
  if len(shape) == 2 and t.path[-1] == 'bias':
    return (size,)
  return shape


def params_from_hf(weights: Mapping[str, np.ndarray], cfg: TransformerConfig,
                   marian_ids: list[int], source: str) -> Params:
  """This library's float32 params (nested dicts of numpy arrays) from Transformers tensors;
  ConversionError naming the first tensor missing or of another shape than `cfg` gives."""
  shapes, params = _param_shapes(cfg), {}
  inverse = np.argsort(feature_permutation(cfg.d_model))
  for t in _tensors(cfg):
    if t.name not in weights:
      raise ConversionError(f'{source} has no tensor {t.name}')
    expected = _hf_shape(t, shapes[t.path], cfg.d_model)
    if tuple(weights[t.name].shape) != expected:
      raise ConversionError(f'{source}: tensor {t.name} has shape {weights[t.name].shape}, '
                            f'config.json (d_model={cfg.d_model}, vocab_size={cfg.vocab_size}, '
                            f'encoder_ffn_dim={cfg.d_ff}) gives {expected}')
    x = np.asarray(weights[t.name], np.float32)
    for axis in t.model_axes:
      x = np.take(x, inverse, axis=axis)
    if t.vocab_axis is not None:
      x = np.take(x, marian_ids, axis=t.vocab_axis)
    node = params
    for key in t.path[:-1]:
      node = node.setdefault(key, {})
    node[t.path[-1]] = x.reshape(shapes[t.path])
  return params


def params_to_hf(params: Params, cfg: TransformerConfig,
                 marian_ids: list[int]) -> dict[str, np.ndarray]:
  """Transformers tensors (float32, Marian's ids and feature order) of `params`. With
  `zero_pad_embedding` the pad row is written as zeros (Transformers' decoder starts from
  it; the pad logit it also gives is never chosen)."""
  perm, rows = feature_permutation(cfg.d_model), np.argsort(marian_ids)
  d, out = cfg.d_model, {}
  for t in _tensors(cfg):
    if t.path == ('decoder', 'logits_bias') and not cfg.logits_bias:
      x = np.zeros((cfg.vocab_size,), np.float32)
    else:
      x = functools.reduce(lambda node, key: node[key], t.path, params)
    x = np.asarray(x, np.float32)
    x = x.reshape(_hf_shape(t, x.shape, d))
    for axis in t.model_axes:
      x = np.take(x, perm, axis=axis)
    if t.vocab_axis is not None:
      x = np.take(x, rows, axis=t.vocab_axis)
      if t.name == 'model.shared.weight' and cfg.zero_pad_embedding:
        x[marian_ids[0]] = 0.0
    out[t.name] = np.ascontiguousarray(x)
  return out


# ------------------------------------------------------------------------ files


def _read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ConversionError(f'cannot read {path}: {getattr(e, "strerror", None) or e}') from None


def _parse_json(text: str, path: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConversionError(f'{path}:{e.lineno}: not JSON ({e.msg})') from None


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """The tensors of `hf_dir`'s model.safetensors (numpy, no torch), else of its
  pytorch_model.bin (which needs torch)."""
  safetensors_path = os.path.join(hf_dir, 'model.safetensors')
  bin_path = os.path.join(hf_dir, 'pytorch_model.bin')
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return load_file(safetensors_path)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line.
      raise ConversionError(f'cannot read {safetensors_path}: {e}') from None
  if not os.path.exists(bin_path):
    raise ConversionError(f'{hf_dir} is not a Marian checkpoint: no model.safetensors or '
                          'pytorch_model.bin')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(f'reading {bin_path} needs torch (pip install torch), or save the '
                          'model as safetensors') from None
  state = torch.load(bin_path, map_location='cpu', weights_only=True)
  return {name: value.float().numpy() for name, value in state.items()}


def vocabulary_file(source_spm: bytes, target_spm: bytes, vocab_json: str,
                    marian_ids: list[int]) -> bytes:
  """The bytes of a `tokenizer.TwoModelVocabulary` file."""
  return json.dumps({
      'source_spm': base64.b64encode(source_spm).decode('ascii'),
      'target_spm': base64.b64encode(target_spm).decode('ascii'),
      'vocab_json': vocab_json, 'marian_ids': marian_ids}).encode('utf-8')


def _read_vocabulary(hf_dir: str, vocab_size: int) -> tuple[bytes, bytes, str]:
  """source.spm, target.spm (bytes, loadable) and vocab.json (text) of `hf_dir`."""
  models = []
  for name in SPM_FILES:
    path = os.path.join(hf_dir, name)
    if not os.path.exists(path):
      raise ConversionError(f'missing SentencePiece model {path}')
    with open(path, 'rb') as f:
      models.append(f.read())
    try:
      spm.SentencePieceProcessor(model_proto=models[-1])
    except RuntimeError as e:
      raise ConversionError(f'{path} is not a SentencePiece model '
                            f'({str(e).splitlines()[0]})') from None
  path = os.path.join(hf_dir, 'vocab.json')
  if not os.path.exists(path):
    raise ConversionError(f'{hf_dir} is not a Marian checkpoint: no vocab.json')
  text = _read_text(path)
  vocab = _parse_json(text, path)
  if (not isinstance(vocab, dict) or '<unk>' not in vocab
      or not all(isinstance(i, int) and 0 <= i < vocab_size for i in vocab.values())):
    raise ConversionError(f'{path} must map pieces (with <unk>) to ids in [0, {vocab_size})')
  return models[0], models[1], text


def _make_dir(path: str) -> None:
  """Create the directory `path` if needed; ConversionError if it cannot be (e.g. a file)."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConversionError(f'cannot create the directory {path}: {e.strerror}') from None


def import_marian(hf_dir: str, workdir: str) -> str:
  """Convert the Marian `save_pretrained` directory `hf_dir` into a new workdir (which must
  not exist or be empty); returns the path of its parameters (`<workdir>/averaged`)."""
  config_path = os.path.join(hf_dir, 'config.json')
  if not os.path.isfile(config_path):
    raise ConversionError(f'{hf_dir} is not a Marian checkpoint: no config.json')
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise ConversionError(f'workdir {workdir} exists and is not empty')
  kept = {name: _read_text(os.path.join(hf_dir, name)) for name in JSON_FILES
          if os.path.exists(os.path.join(hf_dir, name))}
  hf = _parse_json(kept['config.json'], config_path)
  cfg = config_from_hf(hf, config_path)
  source_spm, target_spm, vocab_json = _read_vocabulary(hf_dir, cfg.vocab_size)
  marian_ids = marian_order(cfg.vocab_size, hf.get('eos_token_id'), hf.get('pad_token_id'))
  weights = read_weights(hf_dir)
  if 'model.shared.weight' not in weights and 'model.encoder.embed_tokens.weight' in weights:
    weights['model.shared.weight'] = weights['model.encoder.embed_tokens.weight']  # older saves
  weights.setdefault('final_logits_bias', np.zeros((1, cfg.vocab_size), np.float32))
  pad_row = weights.get('model.shared.weight', np.zeros((cfg.vocab_size, 1)))[marian_ids[0]]
  cfg = cfg.replace(zero_pad_embedding=not np.any(pad_row))
  params = params_from_hf(weights, cfg, marian_ids, hf_dir)
  _make_dir(workdir)
  wd = Workdir(workdir)
  with open(wd.two_model_vocab, 'wb') as f:
    f.write(vocabulary_file(source_spm, target_spm, vocab_json, marian_ids))
  with open(wd.marian_files, 'w', encoding='utf-8') as f:
    json.dump(kept, f, indent=1)
  wd.save_model_config(cfg)
  return checkpoint.write_averaged(workdir, params, {
      **compatibility.training_metadata(cfg, wd.two_model_vocab), 'averaged_steps': [],
      'imported_from': os.path.abspath(hf_dir)})


def _hf_json(kept: Optional[str], values: Mapping[str, Any]) -> str:
  """A Transformers JSON file: `kept` (an imported model's original text) unchanged if it
  already holds `values` (a key it lacks counts as MarianConfig's default), else its values
  updated (or `values` alone) in Transformers' layout (sorted keys, 2-space indent)."""
  original = json.loads(kept) if kept is not None else {}
  implied = {'decoder_vocab_size': original.get('vocab_size'), 'is_encoder_decoder': True,
             'share_encoder_decoder_embeddings': True, 'tie_word_embeddings': True}
  if kept is not None and all(original.get(k, implied.get(k)) == v for k, v in values.items()):
    return kept
  return json.dumps({**original, **values}, indent=2, sort_keys=True) + '\n'


def export_marian(workdir: str, out_dir: str) -> list[str]:
  """Write the post-LN model of `workdir` as a MarianMTModel `save_pretrained` directory
  `out_dir` (created if needed); returns the files written. An imported model's files
  come back byte-identical."""
  params, cfg, vocab_path = inference.load_for_inference(workdir)
  check_exportable(cfg)
  with open(vocab_path, 'rb') as f:
    vocab = load_vocabulary(f.read())
  if isinstance(vocab, TwoModelVocabulary):
    spm_models = (vocab.source_model, vocab.target_model)
    vocab_json, marian_ids = vocab.vocab_json, vocab.marian_ids
  else:  # an own joint model: pad last, the others one down (EOS 0, <unk> 1)
    marian_ids = [(i - 1) % cfg.vocab_size for i in range(cfg.vocab_size)]
    spm_models = (vocab.model_proto, vocab.model_proto)
    pieces = vocab.pieces(range(vocab.vocab_size))
    vocab_json = json.dumps(dict(sorted(((p, marian_ids[i]) for i, p in enumerate(pieces)),
                                        key=lambda item: item[1])), indent=2)
  if len(marian_ids) != cfg.vocab_size:
    raise ConversionError(f'{vocab_path} has {len(marian_ids)} ids, the model '
                          f'{cfg.vocab_size}')
  pad_id, eos_id = marian_ids[0], marian_ids[1]
  if not cfg.zero_pad_embedding and np.any(params['source_embed']['embedding'][0]):
    logging.warning('this model starts decoding from the embedding of id 0 '
                    '(model.zero_pad_embedding=False): Transformers gives the same output, '
                    'but CTranslate2 starts Marian decoders from zeros and will differ')
  kept_path = Workdir(workdir).marian_files
  kept = json.loads(_read_text(kept_path)) if os.path.exists(kept_path) else {}
  files = {
      'config.json': _hf_json(kept.get('config.json'), {
          **config_to_hf(cfg, pad_id, eos_id), **({} if kept else {
              'forced_eos_token_id': None})}),
      'generation_config.json': _hf_json(kept.get('generation_config.json'), {
          'decoder_start_token_id': pad_id, 'eos_token_id': eos_id, 'pad_token_id': pad_id,
          **({} if kept else {'bad_words_ids': [[pad_id]], 'max_length': cfg.max_len})}),
      'tokenizer_config.json': _hf_json(kept.get('tokenizer_config.json'), {} if kept else {
          'tokenizer_class': 'MarianTokenizer', 'eos_token': '</s>', 'unk_token': '<unk>',
          'pad_token': '<pad>', 'model_max_length': cfg.max_len, 'separate_vocabs': False}),
      'vocab.json': vocab_json,
  }
  if 'special_tokens_map.json' in kept:
    files['special_tokens_map.json'] = kept['special_tokens_map.json']
  _make_dir(out_dir)
  contents = {**{name: text.encode('utf-8') for name, text in files.items()},
              **dict(zip(SPM_FILES, spm_models))}
  written = [os.path.join(out_dir, name) for name in [*contents, 'model.safetensors']]
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  try:
    for path, data in zip(written, contents.values()):
      with open(path, 'wb') as f:
        f.write(data)
    save_file(params_to_hf(params, cfg, marian_ids), written[-1], metadata={'format': 'pt'})
  except OSError as e:
    raise ConversionError(f'cannot write {e.filename or out_dir}: {e.strerror}') from None
  return written
