"""Parsing as a training task and the parse CLI: a tiny parser trained on the treebank."""

import json
import os

import pytest

from transformer_jax.training import config as config_lib
from transformer_jax import tokenizer as tokenizer_lib
from transformer_jax.cli import parse
from transformer_jax.parsing import evalb, linearize, parser, symbols, treebank
from transformer_jax.parsing.treebank import parse_tree

pytestmark = pytest.mark.xdist_group('data')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_SENTENCES = 3


def _train(tmp_path_factory, linearization):
  """configs/parse_craft.py shrunk to a 1+1-layer d_model 32 model of `linearization`,
  trained 3 steps, its evaluation parsing the first dev sentences."""
  from transformer_jax.training import train_lib
  config = config_lib.load_config(os.path.join(ROOT, 'configs', 'parse_craft.py'))
  config.update(vocab_size=300, vocab_max_sentences=3000, batch_size=2, num_train_steps=3,
                train_minutes=0.0, eval_every_minutes=0.0, eval_every_steps=3,
                num_eval_batches=1, decode_sentences=EVAL_SENTENCES, save_every_steps=3,
                average_last=0, progress_bar=False, shuffle_buffer=100, pack_window=64,
                linearization=linearization)
  config.model.update(d_model=32, d_ff=64, num_heads=2, num_encoder_layers=1,
                      num_decoder_layers=1, max_len=512, dropout_rate=0.0)
  root = tmp_path_factory.mktemp(f'parser_{linearization}')
  train_lib.train_and_evaluate(config, str(root))
  return root


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _train(tmp_path_factory, 'xx')


@pytest.fixture(scope='module')
def tags_workdir(tmp_path_factory):
  return _train(tmp_path_factory, 'tags')


def test_tags_parser_logs_tagging_accuracy_and_writes_its_tags(tags_workdir, tmp_path, capsys):
  """A parser of the 'tags' linearisation: its evaluation logs tagging accuracy; the CLI
  (which reads the linearisation from the workdir) writes predicted tags."""
  with open(tags_workdir / 'metrics.jsonl') as f:
    (record,) = [r for r in map(json.loads, f) if 'eval/f1' in r]
  lines = (tags_workdir / 'translations' / 'eval_step3.txt').read_text('utf-8').splitlines()
  golds = treebank.split_trees('dev')[:EVAL_SENTENCES]
  trees = [parse_tree(line) for line in lines]
  assert record['eval/tag_accuracy'] == pytest.approx(parser.tag_accuracy(golds, trees))
  assert record['eval/repaired_percent'] == 0  # constrained by default
  output = tmp_path / 'out.txt'
  assert parse.main(['--workdir', str(tags_workdir), '--output', str(output), '--greedy',
                     '--input', str(_write(tmp_path, 'Growth stops .')), '--no_progress',
                     '--cpu_devices', '1']) == 0
  tags = parse_tree(output.read_text(encoding='utf-8')).tags()
  assert len(tags) == 3 and set(tags) <= set(symbols.tags())


def _write(tmp_path, text):
  path = tmp_path / 'in.txt'
  path.write_text(text + '\n', encoding='utf-8')
  return path


def test_vocabulary_symbols_are_single_pieces(workdir):
  assert symbols.vocabulary_symbols()[:3] == ('▁XX', '▁(ADJP', '▁)ADJP')
  with open(workdir / 'spm.model', 'rb') as f:
    vocab = tokenizer_lib.Tokenizer(f.read())
  tree = treebank.split_trees('dev')[0]
  target = linearize.to_sequence(tree)
  ids = vocab.encode(target)
  assert len(ids) == len(target.split()) + 1  # one piece a symbol, then EOS
  assert vocab.pieces(ids[:-1]) == ['▁' + symbol for symbol in target.split()]
  assert set(symbols.vocabulary_symbols()) <= set(vocab.pieces(range(vocab.vocab_size)))
  assert vocab.decode(ids) == target


def test_training_evaluation_logs_f1_of_the_trees_it_writes(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    (record,) = [r for r in map(json.loads, f) if 'eval/f1' in r]
  lines = (workdir / 'translations' / 'eval_step3.txt').read_text('utf-8').splitlines()
  golds = treebank.split_trees('dev')[:EVAL_SENTENCES]
  trees = [parse_tree(line) for line in lines]
  assert [tree.words() for tree in trees] == [gold.words() for gold in golds]
  scores = evalb.evaluate(golds, trees)
  assert record['step'] == 3
  assert record['eval/f1'] == pytest.approx(scores['all'].f1)
  assert record['eval/f1_len40'] == pytest.approx(scores['len<=40'].f1)
  assert 0 <= record['eval/repaired_percent'] <= 100
  assert 'eval/loss' in record


@pytest.mark.parametrize('flags', [['--greedy', '--pretokenized'],
                                   ['--beam_size', '3', '--alpha', '0.3'],
                                   ['--greedy', '--unconstrained']])
def test_cli_writes_one_tree_per_line_over_the_words(workdir, tmp_path, capsys, flags):
  source = tmp_path / 'in.txt'
  source.write_text('The cells ( in vitro ) divide .\n\n  Growth   stops\n', encoding='utf-8')
  output = tmp_path / 'out.txt'
  code = parse.main(['--workdir', str(workdir), '--input', str(source), '--output', str(output),
                     '--max_extra_len', '20', '--no_progress', '--cpu_devices', '1', *flags])
  assert code == 0, capsys.readouterr().err
  lines = output.read_text(encoding='utf-8').split('\n')
  assert lines[-1] == '' and len(lines) == 4 and lines[1] == ''
  first, third = parse_tree(lines[0]), parse_tree(lines[2])
  assert first.label == third.label == 'TOP'
  assert first.words() == 'The cells -LRB- in vitro -RRB- divide .'.split()
  assert third.words() == ['Growth', 'stops']
  err = capsys.readouterr().err
  assert 'sentences parsed' in err
  # A 3-step model's outputs are trees only because the automaton makes them so.
  assert ('0 of the outputs repaired' in err) != ('--unconstrained' in flags)


def test_cli_tokenises_raw_text_as_the_treebank(workdir, tmp_path, capsys):
  source = tmp_path / 'in.txt'
  source.write_text('"The cells weren\'t grown in Brca1-deficient (anti-inflammatory) '
                    'mice," they said.\n', encoding='utf-8')
  output = tmp_path / 'out.txt'
  assert parse.main(['--workdir', str(workdir), '--input', str(source), '--output',
                     str(output), '--greedy', '--no_progress', '--cpu_devices', '1']) == 0
  tree = parse_tree(output.read_text(encoding='utf-8'))
  assert tree.words() == ('`` The cells were n\'t grown in Brca1 - deficient -LRB- '
                          "anti-inflammatory -RRB- mice , '' they said .").split()


@pytest.mark.parametrize('flags, message', [
    (['--workdir', 'no/such/dir'], 'workdir no/such/dir does not exist'),
    (['--beam_size', '0'], '--beam_size must be >= 1'),
    (['--input', 'no/such/file.txt'], 'cannot read no/such/file.txt'),
    (['--max_extra_len', '-1'], '--max_extra_len must be >= 0, got -1'),
])
def test_cli_bad_input_is_one_line(workdir, capsys, flags, message):
  argv = ['--workdir', str(workdir), *flags] if flags[0] != '--workdir' else flags
  assert parse.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert err.startswith('transformer-jax-parse: error: ') and message in err


def test_sentence_words_escape_brackets_as_the_treebank():
  assert parser.sentence_words(' a (b) ( c\t)\n') == ['a', '-LRB-b-RRB-', '-LRB-', 'c', '-RRB-']
  assert parser.sentence_words('   ') == []


def test_split_keys_are_checked():
  config = config_lib.load_config(os.path.join(ROOT, 'configs', 'parse_craft.py'))
  assert [parser.split_name(config, role) for role in ('train', 'eval', 'test')] == [
      'train', 'dev', 'test']
  config.eval_split = 'validation'
  with pytest.raises(ValueError, match=r"config.eval_split='validation': the treebank"):
    parser.split_name(config, 'eval')
  config.dataset = 'bible'
  with pytest.raises(ValueError, match="dataset='craft'"):
    parser.split_name(config, 'train')
