"""The translate CLI: batching, order, errors, and one real end-to-end run."""

import io
import os
import random
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import linen as nn

from transformer_jax import Transformer, checkpoint, compatibility
from transformer_jax import bleu, cli, inference
from transformer_jax.cli import translate
from transformer_jax.workdir import Workdir, WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = ['bad face', '', 'dead bead cab fad ace abc', 'ace', '   ', 'cab cab', 'fad bad ace',
         'bead', '']


class CharVocab:
  """Characters as ids 3..; EOS (1) appended; decode stops at EOS."""

  def encode(self, text):
    return [3 + ord(c) - ord(' ') for c in text] + [1]

  def decode(self, ids):
    ids = list(ids)
    ids = ids[:ids.index(1)] if 1 in ids else ids
    return ''.join(chr(i - 3 + ord(' ')) for i in ids if i)


class ReverseModel:
  """Stands in for the model: outputs each source reversed, EOS, zeros; records shapes."""

  def __init__(self):
    self.shapes = []

  def __call__(self, batch):
    self.shapes.append(batch.shape)
    out = np.zeros((batch.shape[0], batch.shape[1] + 3), np.int32)
    for r, row in enumerate(batch):
      words = [t for t in row if t > 1]
      out[r, :len(words) + 1] = words[::-1] + [1]
    return out


@pytest.mark.parametrize('batch_size', [1, 2, 3, 16])
def test_order_and_one_line_per_input(batch_size):
  model = ReverseModel()
  out = inference.translate_lines(LINES, model, CharVocab(), batch_size=batch_size,
                                  max_source_len=64, progress=False)
  assert out == [line[::-1] if line.strip() else '' for line in LINES]
  assert all(rows == batch_size and width in (16, 32, 64) for rows, width in model.shapes)


# Lines without content: nothing but white space, controls or default-ignorable characters
# (zero-width space, BOM, word joiner + zero-width joiner, soft hyphen, variation selector).
CONTENT_FREE = ['\u200b', '\ufeff', ' \u2060\u200d ', '\u00ad', '\ufe0f\t', '\x00']


def test_lines_without_content_come_out_empty_like_blank_lines():
  model = ReverseModel()
  lines = ['\ufeffbad face', *CONTENT_FREE, 'ace\u200bbad']
  out = inference.translate_lines(lines, model, CharVocab(), batch_size=4, max_source_len=64,
                                  progress=False)
  # A leading BOM changes nothing; a zero-width space inside text is text.
  assert out == ['ecaf dab', *[''] * len(CONTENT_FREE), 'dab\u200beca']
  assert len(model.shapes) == 1  # only the two real lines reached the model


def test_lines_the_vocabulary_encodes_to_eos_alone_come_out_empty():
  class DropsX(CharVocab):
    def encode(self, text):
      return super().encode(text.replace('x', ''))
  def writes_z(batch):  # a model that writes 'z' for any row, even one of EOS alone
    return np.tile(DropsX().encode('z'), (len(batch), 1))
  out = inference.translate_lines(['xx', 'ab'], writes_z, DropsX(), batch_size=2,
                                  max_source_len=16, progress=False)
  assert out == ['', 'z']


def test_long_sources_are_cut_keeping_eos_with_a_warning(caplog):
  out = inference.translate_lines(['ab', 'abcdefghijklmnopqrstuvwxyz'], ReverseModel(),
                                  CharVocab(), batch_size=2, max_source_len=16, progress=False)
  assert out == ['ba', 'onmlkjihgfedcba']  # 15 characters + EOS
  assert [r.getMessage() for r in caplog.records] == [
      '1 of 2 lines have more than 16 tokens and were cut to that length (first: line 2)']


def test_bucket_lengths():
  assert [inference.bucket_length(n, 100) for n in (1, 16, 17, 33, 64, 65, 200)] == [
      16, 16, 32, 64, 64, 100, 100]


def test_read_lines_keeps_empty_lines(tmp_path):
  path = tmp_path / 'in.txt'
  path.write_bytes(b'one\r\n\ntwo\n')
  assert cli.read_lines(str(path)) == ['one', '', 'two']
  path.write_bytes(b'one\n\n')
  assert cli.read_lines(str(path)) == ['one', '']


def test_read_lines_skips_a_leading_bom_and_refuses_bytes_that_are_not_utf8(tmp_path):
  path = tmp_path / 'in.txt'
  path.write_bytes(b'\xef\xbb\xbfone\n\xef\xbb\xbftwo\n')
  assert cli.read_lines(str(path)) == ['one', '\ufefftwo']
  path.write_bytes(b'fine\nna\xefve\nok\n\xff\n')
  with pytest.raises(cli.UserError) as error:
    cli.read_lines(str(path))
  assert str(error.value) == f'{path}:2: not UTF-8 (2 lines: 2, 4)'


def test_stdout_is_utf8_whatever_the_locale(monkeypatch):
  stdout = io.TextIOWrapper(io.BytesIO(), encoding='ascii')
  monkeypatch.setattr(sys, 'stdout', stdout)
  cli.write_lines(None, ['Grüße ⁇', ''])
  assert stdout.buffer.getvalue() == 'Grüße ⁇\n\n'.encode('utf-8')


def _run(*command, stdin='', **env):
  """Run a Python subprocess on CPU, sharing the tests' compilation cache; `env` adds
  environment variables."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, '.jax_cache'), **env)
  return subprocess.run([sys.executable, *command], input=stdin, capture_output=True,
                        text=True, timeout=300, env=env, cwd=ROOT)


def test_cpu_devices_apply_before_jax_starts_and_not_after(caplog):
  code = ('from transformer_jax import cli; cli.use_cpu_devices(2)\n'
          'import jax; print(jax.device_count(), jax.devices()[0].platform)')
  result = _run('-c', code)
  assert result.stdout.split() == ['2', 'cpu'], result.stderr
  cli.use_cpu_devices(3)  # this process has started JAX (conftest): a warning only
  assert jax.device_count() == 1
  assert caplog.records[0].getMessage() == (
      '--cpu_devices 3 not applied: JAX has already started with 1 CPU device(s)')


def test_default_cpu_devices_leave_a_count_set_by_the_environment(monkeypatch):
  monkeypatch.delenv('JAX_NUM_CPU_DEVICES', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  monkeypatch.setattr(os, 'cpu_count', lambda: 16)
  assert cli.default_cpu_devices() == 2
  monkeypatch.setattr(os, 'cpu_count', lambda: 1)
  assert cli.default_cpu_devices() == 1
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert cli.default_cpu_devices() is None
  monkeypatch.delenv('XLA_FLAGS')
  monkeypatch.setenv('JAX_NUM_CPU_DEVICES', '4')
  assert cli.default_cpu_devices() is None


def test_missing_workdir_is_a_one_line_error(tmp_path):
  result = _run('-m', 'transformer_jax.cli.translate', '--workdir', str(tmp_path / 'nope'),
                stdin='hello\n')
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.strip().count('\n') == 0 and 'Traceback' not in result.stderr
  assert 'does not exist' in result.stderr


def test_empty_workdir_is_a_clear_error(tmp_path, capsys):
  assert translate.main(['--workdir', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('transformer-jax-translate: error: no checkpoints')
  assert err.count('\n') == 1


@pytest.mark.parametrize('option', [('--alpha', '-0.5'), ('--alpha', 'nan'), ('--beam_size', '0'),
                                    ('--cpu_devices', '0')])
def test_invalid_search_options_are_one_line_errors(tmp_path, capsys, option):
  assert translate.main(['--workdir', str(tmp_path), *option]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'transformer-jax-translate: error: {option[0]} must be')
  assert err.count('\n') == 1


# ----------------------------------------------------------------------- a real workdir


def _train_vocab(path, seed=0):
  random.seed(seed)
  words = ['abc', 'bad', 'cab', 'dead', 'face', 'bead', 'fad', 'ace']
  sentences = [' '.join(random.choices(words, k=random.randint(2, 6))) for _ in range(300)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                 vocab_size=16, model_type='unigram', character_coverage=1.0,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  path.write_bytes(model.getvalue())


def make_workdir(root, config, vocab_seed=0):
  """A training workdir at `root` with one checkpoint of a random 16-piece model and its
  vocabulary (trained on random sentences drawn with `vocab_seed`).

  The EOS logit is lowered by about 5 (through the bias of the last, post-LN, LayerNorm
  along the tied EOS embedding) so that the random model writes non-empty outputs.
  """
  _train_vocab(root / 'spm.model', vocab_seed)
  config = config.replace(vocab_size=16)
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(jax.jit(Transformer(config).init)(jax.random.key(0), ones, ones)['params'])
  eos = params['source_embed']['embedding'][1]
  norm = params['decoder']['layer_1']['ffn_block']['norm']
  norm['bias'] = norm['bias'] - 5.0 * eos / jnp.sum(eos ** 2)
  Workdir(str(root)).save_model_config(config)
  metadata = compatibility.training_metadata(config, str(root / 'spm.model'))
  with checkpoint.Checkpointer(str(root), save_every_steps=1, keep=1, metadata=metadata) as c:
    c.maybe_save(1, {'params': params}, force=True)
  return root


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, tiny_config):
  """A training workdir with one checkpoint of a random 16-piece model (`make_workdir`)."""
  return make_workdir(tmp_path_factory.mktemp('workdir'), tiny_config)


def test_vocabulary_must_fit_the_model(workdir, tiny_config):
  vocab = inference.load_vocabulary(str(workdir / 'spm.model'), tiny_config.replace(vocab_size=16))
  assert vocab.decode(vocab.encode('bad face')) == 'bad face'
  with pytest.raises(inference.InferenceError, match='16 pieces but the model only 8'):
    inference.load_vocabulary(str(workdir / 'spm.model'), tiny_config.replace(vocab_size=8))
  with pytest.raises(inference.InferenceError, match='cannot load the vocabulary'):
    inference.load_vocabulary(str(workdir / 'model_config.json'), tiny_config)


def test_end_to_end_cli_matches_library(workdir, tmp_path):
  source = tmp_path / 'source.txt'
  source.write_text('\n'.join(LINES) + '\n', encoding='utf-8')
  output = tmp_path / 'out.txt'
  # Through `python -m`, checking that TensorFlow is never imported on the way.
  code = ('import runpy, sys; sys.argv = ["translate"] + sys.argv[1:]\n'
          'try:\n  runpy.run_module("transformer_jax.cli.translate", run_name="__main__")\n'
          'except SystemExit as e:\n  code = e.code\n'
          'assert "tensorflow" not in sys.modules, "tensorflow imported"\nsys.exit(code)')
  # Batches of 3 rows split over 2 CPU devices (completed with an empty row), compared
  # below with the library decoding batches of 4 rows on one device.
  result = _run('-c', code, '--workdir', str(workdir), '--input', str(source),
                '--output', str(output), '--batch_size', '3', '--max_extra_len', '5',
                '--reference', str(source), '--no_progress', '--cpu_devices', '2')
  assert result.returncode == 0, result.stderr
  assert 'not applied' not in result.stderr
  lines = output.read_text(encoding='utf-8').split('\n')
  assert lines[-1] == '' and len(lines[:-1]) == len(LINES)
  assert [bool(x) for x in lines[:-1]] == [bool(x.strip()) for x in LINES]
  # --reference: both BLEU scores of the written output, side by side, on stderr.
  scores = bleu.format_scores(bleu.corpus_bleu(lines[:-1], LINES, target_lang=''))
  assert scores in result.stderr.splitlines(), result.stderr

  model = inference.load_model(str(workdir))
  fn = inference.make_translate_fn(model, max_extra_len=5)
  assert inference.translate_lines(LINES, fn, model.vocab, batch_size=4,
                                   max_source_len=model.max_len,
                                   progress=False) == lines[:-1]


TRAIN_EVAL_ON_TWO_DEVICES = """
import sys, jax
from transformer_jax import inference, sharding
from transformer_jax.cli import translate
from transformer_jax.training import tasks
model = inference.load_model(sys.argv[1])
pairs = [(line, line) for line in sys.argv[2:]]
mesh = sharding.create_mesh()
assert mesh.devices.size == 2
for beam_size in (1, 2):
  params, config = model.decoder.params, model.decoder.config
  expected = tasks.translate_and_score(params, config, model.vocab, pairs, 3, 64,
                                       beam_size=beam_size, target_lang='en')
  got = tasks.translate_and_score(params, config, model.vocab, pairs, 3, 64,
                                  beam_size=beam_size, mesh=mesh, target_lang='en')
  assert got == expected, (got, expected)
print('ok')
"""


def test_a_workdir_of_another_task_is_refused_in_one_line(workdir, tmp_path, capsys):
  """translate and score refuse a parser's workdir (its config.json's task), parse a
  translation workdir (here one without config.json, as older runs and imported models)."""
  from transformer_jax.cli import parse, score
  parser = tmp_path / 'parser'
  shutil.copytree(workdir, parser)
  (parser / 'config.json').write_text('{"task": "parsing", "dataset": "craft"}')
  text = tmp_path / 'in.txt'
  text.write_text('bad face\n', encoding='utf-8')
  refusal = (f'{parser} holds a parsing model ("task": "parsing" in {parser}/config.json), '
             'not a translation one\n')
  for prog, main, flags in (('translate', translate.main, ['--input', str(text)]),
                            ('score', score.main, ['--source', str(text), '--target', str(text)])):
    assert main(['--workdir', str(parser), *flags, '--no_progress']) == 2
    assert capsys.readouterr().err == f'transformer-jax-{prog}: error: {refusal}'
  assert parse.main(['--workdir', str(workdir), '--input', str(text), '--no_progress',
                     '--cpu_devices', '1']) == 2
  assert capsys.readouterr().err == (
      f'transformer-jax-parse: error: {workdir} holds a translation model (no "task" in '
      f'{workdir}/config.json), not a parsing one\n')


def test_training_evaluation_decodes_per_device_with_the_same_result(workdir):
  """Training's BLEU evaluation on a 2-device mesh (batches of 3 rows padded to 4) gives the
  hypotheses and scores of the global program."""
  result = _run('-c', TRAIN_EVAL_ON_TWO_DEVICES, str(workdir),
                *[line for line in LINES if line.strip()], JAX_NUM_CPU_DEVICES='2')
  assert result.stdout.strip() == 'ok', result.stderr[-2000:]


def test_reference_with_other_line_count_is_a_one_line_error(workdir, tmp_path, capsys):
  source, reference = tmp_path / 'in.txt', tmp_path / 'ref.txt'
  source.write_text('bad face\nace\n', encoding='utf-8')
  reference.write_text('bad face\n', encoding='utf-8')
  assert translate.main(['--workdir', str(workdir), '--input', str(source),
                         '--reference', str(reference)]) == 2
  err = capsys.readouterr().err
  assert err == f'transformer-jax-translate: error: {reference} has 1 lines but the input 2\n'


def test_input_that_is_not_utf8_is_a_one_line_error_naming_file_and_lines(workdir, tmp_path,
                                                                         capsys):
  source = tmp_path / 'latin1.txt'
  source.write_bytes('bad face\nna\u00efve\n'.encode('latin-1') * 6)
  assert translate.main(['--workdir', str(workdir), '--input', str(source),
                         '--cpu_devices', '1']) == 2
  assert capsys.readouterr().err == ('transformer-jax-translate: error: '
                                     f'{source}:2: not UTF-8 (6 lines: 2, 4, 6, 8, 10, 12)\n')


def test_content_free_lines_and_a_bom_through_the_cli(workdir, tmp_path, capsys):
  """A BOM-prefixed first line translates like the plain one; lines that encode to EOS
  alone (U+200B, U+FEFF) or to <unk> only (word joiner) come out empty, like a blank one."""
  source, output = tmp_path / 'in.txt', tmp_path / 'out.txt'
  source.write_text('\ufeffbad face\n\u200b\n\ufeff\n\u2060\n\nace\n', encoding='utf-8')
  assert translate.main(['--workdir', str(workdir), '--input', str(source), '--output',
                         str(output), '--max_extra_len', '5', '--no_progress',
                         '--cpu_devices', '1', '--reference', str(source),
                         '--target_lang', 'zh']) == 0
  assert '|tok:zh|' in capsys.readouterr().err  # --reference's BLEU: the zh tokenizer
  model = inference.load_model(str(workdir))
  vocab = model.vocab
  assert [vocab.encode(x) for x in ('\u200b', '\ufeff')] == [[1], [1]]
  expected = inference.translate_lines(['bad face', 'ace'], inference.make_translate_fn(
      model, max_extra_len=5), vocab, batch_size=32, max_source_len=64, progress=False)
  assert all(expected)  # the random model writes something for real text
  assert output.read_text(encoding='utf-8').split('\n') == [
      expected[0], '', '', '', '', expected[1], '']


def test_bleu_language_from_the_flag_or_the_workdirs_training_config(tmp_path, caplog):
  assert translate.bleu_language(None, str(tmp_path)) == ''
  assert 'no --target_lang and no target_lang in' in caplog.text
  (tmp_path / 'config.json').write_text('{"target_lang": "ja", "dataset": "text"}')
  assert translate.bleu_language(None, str(tmp_path)) == 'ja'
  assert translate.bleu_language('zh', str(tmp_path)) == 'zh'
  (tmp_path / 'config.json').write_text('not json')
  with pytest.raises(WorkdirError, match=r'config.json:1: invalid JSON'):
    translate.bleu_language(None, str(tmp_path))
