"""Config files: they load, unknown keys fail clearly, every Table 3 variant builds and trains."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig, compatibility, count_params, sharding
from transformer_jax.training import synthetic, train_lib
from transformer_jax.training import optimizer as optimizer_lib
from transformer_jax.training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')

# Parameter counts with a shared 37k vocabulary (this implementation), per Table 3 row.
EXPECTED_PARAMS = {
    'A1': 63_082_496, 'A2': 63_082_496, 'A3': 63_082_496, 'A4': 63_082_496,
    'B1': 55_990_784, 'B2': 58_354_688, 'C1': 33_656_832, 'C2': 48_369_664,
    'C3': 77_795_328, 'C4': 26_834_944, 'C5': 163_889_152, 'C6': 50_487_296,
    'C7': 88_272_896, 'D1': 63_082_496, 'D2': 63_082_496, 'D3': 63_082_496,
    'D4': 63_082_496, 'E': 63_344_640,
}


def _load(spec):
  return config_lib.load_config(os.path.join(CONFIGS, spec))


def _table3_module():
  spec = importlib.util.spec_from_file_location('table3', os.path.join(CONFIGS, 'table3.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _param_count(model_cfg):
  model = Transformer(model_cfg)
  ones = jnp.ones((1, 4), jnp.int32)
  # A mutable `intermediates` collection selects the explicit attention path (d_k != d_v).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones,
                                             mutable=['params', 'intermediates']))
  return count_params(shapes['params'])


@pytest.mark.parametrize('name', ['base.py', 'big.py', 'demo.py', 'tiny.py', 'parse_craft.py',
                                  'parse_craft_paper.py'])
def test_config_files_load_and_build_a_model(name):
  config = _load(name)
  model_cfg = config_lib.model_config(config, 100)
  assert model_cfg.d_model == config.model.d_model


def test_paper_parser_is_section_6_3s_model():
  config = _load('parse_craft_paper.py')
  assert (config.task, config.dataset) == ('parsing', 'craft')
  assert (config.model.num_encoder_layers, config.model.num_decoder_layers,
          config.model.d_model) == (4, 4, 1024)


def test_base_and_big_are_the_papers_recipes():
  base, big = _load('base.py'), _load('big.py')
  assert (base.label_smoothing, base.warmup_steps, base.adam_b2, base.adam_eps) == (
      0.1, 4000, 0.98, 1e-9)
  assert not base.model.pre_norm and base.model.dropout_rate == 0.1
  assert _param_count(config_lib.model_config(base, 37000)) == 63_082_496
  assert (big.model.d_model, big.model.d_ff, big.model.num_heads, big.model.dropout_rate) == (
      1024, 4096, 16, 0.3)


def test_unknown_keys_are_rejected_with_their_names():
  config = _load('tiny.py')
  config.lerning_rate = 1.0
  with pytest.raises(ValueError, match="unknown config key.*'lerning_rate'"):
    config_lib.validate_config(config)
  config = _load('tiny.py')
  config.model.d_modle = 3
  with pytest.raises(ValueError, match="'model.d_modle'"):
    config_lib.validate_config(config)
  with pytest.raises(ValueError, match="unknown Table 3 variant 'Z9'"):
    _load('table3.py:Z9')
  config = _load('tiny.py')
  config.model.dtype = 'float8'
  with pytest.raises(ValueError, match=r"config.model.dtype='float8'"):
    config_lib.model_config(config, 10)


def test_renamed_keys_are_refused_with_their_new_names():
  config = _load('tiny.py')
  config.num_bleu_sentences = 10
  renamed = r"'num_bleu_sentences' \(renamed: config.decode_sentences\)"
  with pytest.raises(ValueError, match=renamed):
    config_lib.validate_config(config)
  with pytest.raises(KeyError, match=r"'bleu_split' \(renamed: config.decode_split\)"):
    config_lib.apply_override(_load('tiny.py'), 'bleu_split', 'test')


def test_model_keys_are_the_model_configs_fields_with_its_defaults():
  """One source for the model's defaults: `config.model` is TransformerConfig's."""
  config = config_lib.default_config()
  assert config_lib.model_config(config, 100) == TransformerConfig(vocab_size=100)
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  assert set(config.model) == fields - {'vocab_size', 'target_vocab_size'}


def test_out_of_range_values_are_rejected_with_their_names():
  config = _load('tiny.py')
  config.update(batch_size=-1, warmup_steps=0, label_smoothing=1.0)
  with pytest.raises(ValueError, match=r'^config.batch_size=-1 must be > 0; '
                                       r'config.warmup_steps=0 must be > 0; '
                                       r'config.label_smoothing=1.0 must be in \[0, 1\)$'):
    config_lib.validate_config(config)
  config.update(batch_size=8, warmup_steps=10, label_smoothing=0.1, num_eval_batches=0)
  with pytest.raises(ValueError, match=r'^config.num_eval_batches=0 must be -1 \(all\) or > 0$'):
    config_lib.validate_config(config)
  config.update(num_eval_batches=1, linearization='trees')
  with pytest.raises(ValueError, match=r"^config.linearization='trees' must be one of 'xx', "):
    config_lib.validate_config(config)
  config = _load('demo.py')
  config.max_len = 512
  with pytest.raises(ValueError, match=r'^config.max_len=512 exceeds config.model.max_len=256'):
    config_lib.validate_config(config)
  # The model's values are TransformerConfig's to check, named by their config key.
  for key, value, message in (('dropout_rate', 1.0, r'dropout_rate must be in \[0, 1\)'),
                              ('num_heads', 0, 'num_heads must be a positive integer'),
                              ('num_encoder_layers', 0, 'num_encoder_layers must be a positive')):
    config = _load('tiny.py')
    config.model[key] = value
    with pytest.raises(ValueError, match=rf'^config.model: {message}'):
      config_lib.validate_config(config)


def test_a_data_key_added_later_is_recorded_only_off_its_default():
  """Checkpoints written before `pack_window` existed packed with its default: they still
  resume with it, and not with another window."""
  config = _load('tiny.py')
  before = compatibility.canonical(config_lib.data_identity(config))  # as a checkpoint has it
  assert 'pack_window' not in before and set(before) == set(config_lib.DATA_KEYS) - {
      'pack_window'}
  assert compatibility.mismatch({'data': before}, {'data': config_lib.data_identity(config)}
                                ) == []
  config.pack_window = 64
  assert compatibility.mismatch({'data': before}, {'data': config_lib.data_identity(config)}
                                ) == ['data.pack_window: checkpoint None != now 64']


def _train_cli(*flags):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/tiny.py', *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_cli_unknown_override_is_one_clear_line(tmp_path):
  result = _train_cli(f'--workdir={tmp_path}', '--config.lerning_rate=2')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "transformer-jax-train: error: bad --config flag: unknown config key 'lerning_rate'")


def test_cli_unwritable_workdir_is_one_line_not_blamed_on_the_config(tmp_path):
  (tmp_path / 'file').write_text('')
  result = _train_cli(f'--workdir={tmp_path}/file/run')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('transformer-jax-train: error: [Errno 20] Not a directory')
  assert 'config' not in last


def test_cli_unknown_table3_variant_is_one_clear_line(tmp_path):
  result = _train_cli(f'--workdir={tmp_path}', '--config=configs/table3.py:Z9')  # the last wins
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'transformer-jax-train: error: --config=configs/table3.py:Z9: '
      "ValueError: unknown Table 3 variant 'Z9'; choose one of A1, ")


def test_table3_parameter_counts():
  module = _table3_module()
  assert sorted(module.VARIANTS) == sorted(EXPECTED_PARAMS)
  for variant, expected in EXPECTED_PARAMS.items():
    count = _param_count(config_lib.model_config(_load(f'table3.py:{variant}'), 37000))
    assert count == expected, variant
    # Within 8% of the paper's column (the gap is a constant ~3.7-4.6k embedding rows).
    paper = module.PAPER_PARAMS_M.get(variant, 65) * 1e6
    assert abs(count - paper) / paper < 0.08, variant


def _variant_trains_one_step(variant):
  """One real train step of the variant on a 64-token vocabulary and at most 2+2 layers.

  What these rows change (heads, d_k != d_v, learned positions) lives in every layer;
  the full depth is what test_table3_parameter_counts counts (C1 is 2+2 already).
  """
  config = _load(f'table3.py:{variant}')
  for key in ('num_encoder_layers', 'num_decoder_layers'):
    config.model[key] = min(config.model[key], 2)
  model_cfg = config_lib.model_config(config, 64)
  mesh = sharding.create_mesh((-1, 1, 1))
  optimizer, schedule = optimizer_lib.create_optimizer(config, model_cfg.d_model)
  state = train_lib.create_train_state(model_cfg, optimizer, mesh, 0)
  step = train_lib.make_train_step(model_cfg, config, mesh, optimizer, schedule)
  batch = next(synthetic.synthetic_batches(2, 6, 64))
  state, metrics = step(state, sharding.shard_batch(batch, mesh))
  assert int(state.step) == 1
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0


@pytest.mark.parametrize('variant', ['A4', 'B1', 'C1', 'E'])
def test_table3_variant_trains_a_step(variant):
  _variant_trains_one_step(variant)
