"""Marian / OPUS-MT import and export against Transformers and CTranslate2 (no network):
a tiny MarianMTModel saved here (tests/marian_models.py) is imported, decoded by both
libraries, exported back; an own post-LN model is exported and run by both."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import linen as nn

import marian_models
from transformer_jax import (Transformer, TransformerConfig, checkpoint, compatibility,
                             decoding, inference)
from transformer_jax.interop import marian
from transformer_jax.training import vocabulary
from transformer_jax import tokenizer
from transformer_jax.cli import marian as marian_cli, score, translate
from transformer_jax.workdir import Workdir, model_config_from_dict, model_config_to_dict

LONG = ' '.join(marian_models.bible_lines('en', 'test', 40)[30:33])  # ~150 tokens


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('marian') / 'hf')
  marian_models.build_marian_dir(path)
  return path


@pytest.fixture(scope='module')
def imported(hf_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('imported') / 'workdir')
  assert marian.import_marian(hf_dir, workdir) == os.path.join(workdir, 'averaged')
  return workdir, inference.load_model(workdir)


def _sentences(count):
  return marian_models.bible_lines('en', 'test', count - 2) + [LONG, 'Zürich ☃ unknown ñ']


def test_import_config_and_vocabulary(hf_dir, imported):
  from transformers import MarianTokenizer
  _, model = imported
  cfg = model.decoder.config
  assert (cfg.activation, cfg.scale_embedding, cfg.logits_bias, cfg.zero_pad_embedding,
          cfg.layer_norm_epsilon, cfg.pre_norm) == ('swish', True, True, True, 1e-5, False)
  vocab, hf_tok = model.vocab, MarianTokenizer.from_pretrained(hf_dir)
  assert vocab.marian_ids[:3] == [cfg.vocab_size - 1, 0, 1]  # pad, EOS, <unk> -> 0, 1, 2
  for sentence in _sentences(12):
    expected = hf_tok(sentence)['input_ids']
    assert [vocab.marian_ids[i] for i in vocab.encode(sentence)] == expected
  assert 1 in {i for s in _sentences(12) for i in hf_tok(s)['input_ids']}  # <unk> was tested


def test_teacher_forced_logits_match_transformers(hf_dir, imported):
  import torch
  from transformers import MarianMTModel, MarianTokenizer
  _, model = imported
  hf_model, hf_tok = MarianMTModel.from_pretrained(hf_dir), MarianTokenizer.from_pretrained(hf_dir)
  batch = hf_tok(_sentences(6), text_target=marian_models.bible_lines('es', 'test', 6),
                 padding=True, return_tensors='pt')
  with torch.no_grad():
    expected = hf_model(**batch).logits.numpy()
  ours_of = np.argsort(model.vocab.marian_ids)
  inputs, targets = ours_of[batch['input_ids'].numpy()], ours_of[batch['labels'].numpy()]
  assert (inputs == 0).any() and (targets == 0).any()  # both sides padded
  logits = Transformer(model.decoder.config).apply({'params': model.decoder.params}, inputs,
                                                  targets)
  real = targets != 0
  np.testing.assert_allclose(np.asarray(logits)[real],
                             expected[..., model.vocab.marian_ids][real], atol=1e-4, rtol=0)


def test_greedy_matches_generate(hf_dir, imported):
  """A few dozen sentences; benchmarks/bench_marian_greedy.py runs a few hundred."""
  _, model = imported
  sentences = _sentences(24)
  expected = marian_models.hf_greedy(hf_dir, sentences, 48)
  got = marian_models.ours_greedy(model.decoder, model.vocab, sentences, 48)
  assert got == expected
  assert len({len(t) for t in got}) > 3 and len({tuple(t) for t in got}) > 8  # not degenerate


def test_translate_cli_on_imported_workdir(hf_dir, imported, tmp_path, capsys):
  from transformers import MarianTokenizer
  workdir, _ = imported
  sentences = _sentences(4)[:3]
  source = tmp_path / 'in.txt'
  source.write_text('\n'.join(sentences) + '\n', encoding='utf-8')
  assert translate.main(['--workdir', workdir, '--input', str(source), '--beam_size', '1',
                         '--max_extra_len', '12', '--no_progress', '--cpu_devices', '1']) == 0
  hf_tok = MarianTokenizer.from_pretrained(hf_dir)
  # Our limit of source + 12 tokens holds the EOS (forced there): 11 tokens more before it.
  expected = [hf_tok.decode(marian_models.hf_greedy(hf_dir, [s], len(hf_tok(s)['input_ids'])
                                                    + 11)[0], skip_special_tokens=True)
              for s in sentences]
  assert capsys.readouterr().out.splitlines() == expected


def test_round_trip_is_byte_identical(hf_dir, imported, tmp_path):
  workdir, _ = imported
  out = str(tmp_path / 'exported')
  written = marian.export_marian(workdir, out)
  names = sorted(os.path.basename(p) for p in written)
  assert names == sorted(os.listdir(hf_dir))
  for name in names:
    with open(os.path.join(hf_dir, name), 'rb') as a, open(os.path.join(out, name), 'rb') as b:
      assert a.read() == b.read(), name


def _own_workdir(path, **overrides):
  """A random post-LN model of this library (interleaved sinusoids, ReLU) with a joint
  SentencePiece vocabulary, written as a workdir; query/key kernels scaled up so that the
  greedy output follows the source."""
  lines = marian_models.bible_lines('en') + marian_models.bible_lines('es')
  spm_bytes = vocabulary.train_model(lines, vocab_size=150)
  cfg = TransformerConfig(vocab_size=150, d_model=32, d_ff=64, num_heads=4,
                          num_encoder_layers=2, num_decoder_layers=2, max_len=512,
                          zero_pad_embedding=True, **overrides)
  ones = np.ones((1, 1), np.int32)
  params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(1), ones, ones)['params'])
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(x) * (6.0 if p[-2].key in ('query', 'key') else 1.0), params)
  os.makedirs(path)
  vocab_path = os.path.join(path, 'spm.model')
  with open(vocab_path, 'wb') as f:
    f.write(spm_bytes)
  Workdir(path).save_model_config(cfg)
  checkpoint.write_averaged(path, params, compatibility.training_metadata(cfg, vocab_path))
  return inference.load_model(path)


def test_export_own_model_runs_in_transformers_and_ctranslate2(tmp_path):
  import ctranslate2
  from ctranslate2.converters import TransformersConverter
  from transformers import MarianTokenizer
  model = _own_workdir(str(tmp_path / 'own'))
  out = str(tmp_path / 'hf')
  marian.export_marian(str(tmp_path / 'own'), out)
  sentences = _sentences(16)
  ids = [model.vocab.encode(s) for s in sentences]
  inputs = np.zeros((len(ids), max(map(len, ids))), np.int32)
  for row, x in zip(inputs, ids):
    row[:len(x)] = x
  # 40 tokens at most, as the others are asked for (one more decoded, where EOS is forced).
  ours = [t[:40] for t in decoding.trim(decoding.greedy(
      model.decoder, inputs, max_extra_len=1000, max_decode_len=41).best)]
  assert len({tuple(t) for t in ours}) > 8
  marian_of = lambda tokens: [(i - 1) % model.decoder.config.vocab_size  # noqa: E731
                              for i in tokens]
  hf = marian_models.hf_greedy(out, sentences, 40)
  assert [t[:-1] if t[-1:] == [0] else t for t in hf] == [marian_of(t) for t in ours]

  ct2_dir = str(tmp_path / 'ct2')
  TransformersConverter(out).convert(ct2_dir, quantization='float32')
  hf_tok = MarianTokenizer.from_pretrained(out)
  tokens = [hf_tok.convert_ids_to_tokens(hf_tok(s)['input_ids']) for s in sentences]
  results = ctranslate2.Translator(ct2_dir, device='cpu').translate_batch(
      tokens, beam_size=1, max_decoding_length=40)
  assert [hf_tok.convert_tokens_to_ids(r.hypotheses[0]) for r in results] == [
      marian_of(t) for t in ours]


def _cli_error(capsys, main, argv):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  return err


def test_one_line_errors(hf_dir, tmp_path, capsys):
  empty = tmp_path / 'empty'
  empty.mkdir()
  new = lambda name: str(tmp_path / name)  # noqa: E731
  assert 'is not a Marian checkpoint' in _cli_error(
      capsys, marian_cli.import_main, ['--from_hf', str(empty), '--workdir', new('a')])
  broken = tmp_path / 'broken'
  shutil.copytree(hf_dir, broken)
  config = (broken / 'config.json').read_text()
  (broken / 'config.json').write_text(config.replace('"swish"', '"gelu_new"'))
  assert 'unsupported architecture option activation_function' in _cli_error(
      capsys, marian_cli.import_main, ['--from_hf', str(broken), '--workdir', new('b')])
  (broken / 'config.json').write_text(config.replace('"marian"', '"bart"'))
  assert 'is not a Marian checkpoint' in _cli_error(
      capsys, marian_cli.import_main, ['--from_hf', str(broken), '--workdir', new('c')])
  (broken / 'config.json').write_text(config)
  (broken / 'target.spm').unlink()
  assert 'missing SentencePiece model' in _cli_error(
      capsys, marian_cli.import_main, ['--from_hf', str(broken), '--workdir', new('d')])
  _own_workdir(new('pre_ln'), pre_norm=True)
  assert 'pre-LN' in _cli_error(
      capsys, marian_cli.export_main, ['--workdir', new('pre_ln'), '--to_hf', new('e')])


@pytest.mark.parametrize('key, change', [('d_model', lambda x: 2 * x),
                                         ('vocab_size', lambda x: x + 10)])
def test_import_names_the_tensor_that_disagrees_with_config_json(hf_dir, tmp_path, capsys,
                                                                 key, change):
  broken = tmp_path / 'broken'
  shutil.copytree(hf_dir, broken)
  config = json.loads((broken / 'config.json').read_text())
  size, d_model = config['vocab_size'], config['d_model']
  config[key] = change(config[key])
  if key == 'vocab_size':
    config['decoder_vocab_size'] = config[key]  # Transformers writes both
  (broken / 'config.json').write_text(json.dumps(config))
  err = _cli_error(capsys, marian_cli.import_main, ['--from_hf', str(broken), '--workdir',
                                                    str(tmp_path / 'out')])
  tensor, shape, expected = {
      'd_model': ('model.shared.weight', (size, d_model), (size, 2 * d_model)),
      'vocab_size': ('final_logits_bias', (1, size), (1, size + 10))}[key]
  assert err.startswith(f'transformer-jax-import: error: {broken}: tensor {tensor} has shape '
                        f'{shape}, config.json (d_model={config["d_model"]}, vocab_size='
                        f'{config["vocab_size"]}, ')
  assert err.endswith(f'gives {expected}\n')


def test_export_to_a_file_or_an_uncreatable_directory_is_one_line(imported, tmp_path,
                                                                    capsys):
  workdir, _ = imported
  (tmp_path / 'file').write_text('')
  for out in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
    err = _cli_error(capsys, marian_cli.export_main, ['--workdir', workdir, '--to_hf', str(out)])
    assert err.startswith(f'transformer-jax-export: error: cannot create the directory {out}: ')


def test_scoring_an_imported_model_splits_targets_with_its_target_model(hf_dir, imported,
                                                                        tmp_path):
  """transformer-jax-score on an imported model: each target token's log-probability is
  Transformers' for the target as MarianTokenizer splits it (`text_target=`: target.spm),
  which segments otherwise than source.spm."""
  import torch
  from transformers import MarianMTModel, MarianTokenizer
  workdir, model = imported
  sources, targets = _sentences(5)[:4], marian_models.bible_lines('es', 'test', 4)
  assert all(model.vocab.encode(t) != model.vocab.encode_target(t) for t in targets)
  hf_model, hf_tok = MarianMTModel.from_pretrained(hf_dir), MarianTokenizer.from_pretrained(hf_dir)
  batch = hf_tok(sources, text_target=targets, padding=True, return_tensors='pt')
  with torch.no_grad():
    logits = hf_model(**batch).logits.numpy().astype(np.float64)
  pad = hf_model.config.pad_token_id
  logits[..., pad] = -np.inf  # padding is never a candidate here
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  labels = batch['labels'].numpy()
  expected = [np.take_along_axis(row, ids[:, None], -1)[ids != pad, 0]
              for row, ids in zip(log_probs, labels)]
  paths = [tmp_path / name for name in ('src', 'tgt', 'out')]
  paths[0].write_text('\n'.join(sources) + '\n')
  paths[1].write_text('\n'.join(targets) + '\n')
  assert score.main(['--workdir', workdir, '--source', str(paths[0]), '--target',
                     str(paths[1]), '--output', str(paths[2]), '--per_token',
                     '--no_progress']) == 0
  for line, want in zip(paths[2].read_text().splitlines(), expected, strict=True):
    total, per_token = line.split('\t')
    np.testing.assert_allclose([float(x) for x in per_token.split()], want, atol=1e-4)
    np.testing.assert_allclose(float(total), want.sum(), atol=1e-3)


def test_two_model_spans_say_which_characters_each_token_covers(imported):
  """Sources (a >>xx<< code, dropped characters) and outputs (pieces only the source model
  knows, <unk>) of a two-model vocabulary: tokens get the words their characters are in."""
  from test_inference_features import assert_words_of_their_characters
  vocab = imported[1].vocab
  for line in ['>>es<< In the \u200b beginning\u200e, God', 'Zürich ☃ unknown ñ']:
    assert len(vocab.spans(line)) == len(vocab.encode(line)) - 1
    assert_words_of_their_characters(line, vocab.spans(line))
  for ids in np.random.default_rng(0).integers(2, vocab.vocab_size, (20, 12)):
    text, spans = vocab.decode_spans(ids)
    assert text == vocab.decode(ids) and len(spans) == len(ids)
    assert_words_of_their_characters(text, spans)


def test_new_options_leave_saved_configs_unchanged():
  """Configs written before the Marian options existed compare equal to today's."""
  saved = model_config_to_dict(TransformerConfig(vocab_size=8))
  assert not {'activation', 'scale_embedding', 'logits_bias', 'zero_pad_embedding'} & set(saved)
  assert model_config_from_dict(saved) == TransformerConfig(vocab_size=8)


def test_training_encoders_match_marian_tokenization(hf_dir, imported):
  """The tf.data encoders of an imported vocabulary give the ids MarianTokenizer gives:
  sources with the source model (a >>xx<< code kept whole), targets with the target one."""
  import tensorflow as tf
  from transformers import MarianTokenizer
  hf = MarianTokenizer.from_pretrained(hf_dir)
  vocab = imported[1].vocab
  sources = _sentences(8)[:6] + ['>>es<< In the beginning', '']
  targets = marian_models.bible_lines('es', 'test', 6)
  source, target = vocabulary.tf_encoders(vocab)
  ours = source(tf.constant(sources)).to_list()
  assert [ids + [tokenizer.EOS_ID] for ids in ours] == [vocab.encode(s) for s in sources]
  want = [hf(text_target=t)['input_ids'][:-1] for t in targets]  # Marian ids, no EOS
  got = [[vocab.marian_ids[i] for i in ids] for ids in target(tf.constant(targets)).to_list()]
  assert got == want
  # Sampled (subword regularisation): the same per key, split by the side's model (the
  # code kept whole), joining back to the text.
  sample = vocabulary.tf_sampler(vocab, tokenizer.Sampling(0.5, seed=3))
  draw = lambda texts, key, side: sample(tf.constant(texts), tf.constant(key, tf.int64),  # noqa: E731
                                         side).to_list()
  assert draw(targets, 0, True) == draw(targets, 0, True) != draw(targets, 1, True)
  assert [vocab.decode(ids) for ids in draw(targets, 0, True)] == targets
  assert [ids[0] for ids in draw(sources[6:7], 0, False)] == vocab.encode(sources[6])[:1]


def test_fine_tuning_an_imported_model(imported, tmp_path):
  from transformer_jax.training import config as config_lib
  from transformer_jax.training import train_lib
  workdir, model = imported
  files = {}
  for split, count in (('train', 64), ('dev', 8)):
    for lang in ('en', 'es'):
      path = tmp_path / f'{split}.{lang}'
      path.write_text('\n'.join(marian_models.bible_lines(lang, split, count)) + '\n')
      files[split, lang] = str(path)
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                               'tiny.py'))
  config.update(dataset='text', init_from=workdir, vocab_size=model.vocab.vocab_size,
                max_len=64, max_eval_len=64, num_train_steps=2, decode_sentences=0,
                average_last=0, pack_window=64, train_source=files['train', 'en'],
                train_target=files['train', 'es'], eval_source=files['dev', 'en'],
                eval_target=files['dev', 'es'], test_source=files['dev', 'en'],
                test_target=files['dev', 'es'])
  shape = model_config_to_dict(model.decoder.config)
  config.model.update({k: v for k, v in shape.items() if k in config.model})
  tuned = str(tmp_path / 'tuned')
  state = train_lib.train_and_evaluate(config, tuned)
  assert int(state.step) == 2
  assert os.path.exists(Workdir(tuned).two_model_vocab)  # adopted from the imported run
  assert inference.load_model(tuned).vocab.encode('Jesus wept.') == model.vocab.encode(
      'Jesus wept.')
