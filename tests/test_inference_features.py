"""Decoding features of the translate and score CLIs: n-best lists with scores, scoring
mode, word alignments, ensembles, sampling; each bad flag one line and exit 2."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regex

from test_translate import LINES, make_workdir, workdir  # noqa: F401 - the fixture
from transformer_jax import Transformer, decoding, hypotheses, inference, scoring
from transformer_jax.cli import score
from transformer_jax.cli import translate
from transformer_jax.model_config import EOS_ID
from transformer_jax.tokenizer import INVISIBLE

SOURCES = [line for line in LINES if line.strip()]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """The input (LINES, blank lines included) and a target file line-aligned with it."""
  root = tmp_path_factory.mktemp('files')
  (root / 'in.txt').write_text('\n'.join(LINES) + '\n', encoding='utf-8')
  targets = ['face bad', 'ace', 'cab fad', '', 'bead dead', 'abc', 'fad', 'dead cab', 'bad']
  (root / 'tgt.txt').write_text('\n'.join(targets) + '\n', encoding='utf-8')
  return root


def _translate(tmp_path, *flags, lines=LINES):
  """translate.main in-process on `lines` -> its output lines."""
  source, output = tmp_path / 'in.txt', tmp_path / 'out.txt'
  source.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  assert translate.main(['--input', str(source), '--output', str(output), '--max_extra_len',
                         '5', '--no_progress', *flags]) == 0
  return output.read_text(encoding='utf-8').splitlines()


def test_nbest_hypotheses_are_distinct_sorted_and_score_their_tokens(workdir):
  model = inference.load_model(str(workdir))
  options = hypotheses.SearchOptions(decoding.Search(beam_size=3, n_best=3, alpha=0.6,
                                                     max_extra_len=5))
  sources = inference.encode_lines(SOURCES, model.vocab, model.max_len)
  (_, (inputs,)), = inference.length_batches({i: (ids,) for i, ids in sources.items()}, 8, 64,
                                             progress=False)
  tokens, scores, log_probs, _ = hypotheses.make_search_fn(model, options)(inputs, 0)
  assert tokens.shape[:2] == scores.shape == log_probs.shape == (8, 3)
  for r in range(len(SOURCES)):
    assert len({tuple(row) for row in tokens[r]}) == 3
    assert np.all(np.diff(scores[r]) <= 0)
    forced, _ = scoring.score(model.decoder, np.repeat(inputs[r:r + 1], 3, 0), tokens[r])
    np.testing.assert_allclose(log_probs[r], forced, rtol=1e-5, atol=1e-5)
    lengths = np.sum(tokens[r] != 0, axis=-1)
    np.testing.assert_allclose(scores[r], forced / decoding.length_penalty(lengths, 0.6),
                               rtol=1e-5, atol=1e-5)


def test_nbest_and_scores_lines(workdir, tmp_path):
  nbest = [line.split(' ||| ') for line in _translate(
      tmp_path, '--workdir', str(workdir), '--beam_size', '3', '--n_best', '3')]
  one_best = [line.split(' ||| ') if line else [] for line in _translate(
      tmp_path, '--workdir', str(workdir), '--beam_size', '3', '--scores')]
  assert len(one_best) == len(LINES)
  expected_indices = [i for i, line in enumerate(LINES) if line.strip() for _ in range(3)]
  assert [int(fields[0]) for fields in nbest] == expected_indices  # none for blank lines
  for index in set(expected_indices):
    entries = [fields[1:] for fields in nbest if int(fields[0]) == index]
    assert all(len(entry) == 3 for entry in entries)
    assert len({hyp for hyp, _, _ in entries}) == 3
    assert [float(s) for _, s, _ in entries] == sorted((float(s) for _, s, _ in entries),
                                                        reverse=True)
    # hypothesis ||| score ||| log_prob: the beam's best, among its n best (which are sorted
    # by the scores of their texts, so that a rescored one may move above it)
    assert one_best[index] in entries
  assert [bool(fields) for fields in one_best] == [bool(line.strip()) for line in LINES]


def _padded(rows):
  out = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for row, ids in zip(out, rows):
    row[:len(ids)] = ids
  return out


def _forward_log_probs(model, sources, targets):
  """Teacher-forced log p(target | source) per token of each pair from the model's forward
  pass (one jitted pass over the pairs padded into a batch: padding changes no real
  position, see test_model)."""
  tgt = [model.vocab.encode(t) for t in targets]
  src, padded = _padded([model.vocab.encode(s) for s in sources]), _padded(tgt)
  logits = jax.jit(Transformer(model.decoder.config).apply)(
      {'params': model.decoder.params}, src, padded)
  log_probs = jax.nn.log_softmax(logits.at[..., 0].set(-jnp.inf), axis=-1)
  picked = np.asarray(jnp.take_along_axis(log_probs, padded[..., None], axis=-1)[..., 0])
  return [row[:len(ids)] for row, ids in zip(picked, tgt)]


def test_score_cli_equals_the_forward_pass(workdir, files, tmp_path, capsys):
  model = inference.load_model(str(workdir))
  targets = (files / 'tgt.txt').read_text(encoding='utf-8').splitlines()
  forward = _forward_log_probs(model, LINES, targets)
  for normalise in (False, True):
    output = tmp_path / f'scores{normalise}.txt'
    assert score.main(['--workdir', str(workdir), '--source', str(files / 'in.txt'),
                       '--target', str(files / 'tgt.txt'), '--output', str(output),
                       '--per_token', '--batch_size', '4', '--no_progress']
                      + ['--normalise'] * normalise) == 0
    lines = output.read_text(encoding='utf-8').splitlines()
    assert len(lines) == len(LINES)  # blank pairs too
    for line, expected in zip(lines, forward):
      total, per_token = line.split('\t')
      np.testing.assert_allclose([float(x) for x in per_token.split()], expected, atol=2e-5)
      np.testing.assert_allclose(float(total), np.mean(expected) if normalise
                                 else np.sum(expected), atol=2e-5)


def _score_texts(workdir, tmp_path, sources, targets):
  """score.main on line-aligned `sources` and `targets` -> the log-probabilities."""
  paths = [tmp_path / 'rescore.src', tmp_path / 'rescore.tgt', tmp_path / 'rescore.out']
  for path, lines in zip(paths, (sources, targets)):
    path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  assert score.main(['--workdir', str(workdir), '--source', str(paths[0]), '--target',
                     str(paths[1]), '--output', str(paths[2]), '--no_progress']) == 0
  return [float(x) for x in paths[2].read_text(encoding='utf-8').splitlines()]


def test_outputs_at_the_limit_and_resegmented_ones_occur(workdir):
  """The random model's beam outputs with --max_extra_len 2 include both kinds of output
  that the next test rescores: ones cut at the length limit (their EOS forced) and ones
  whose text re-encodes to other ids than the search emitted."""
  model = inference.load_model(str(workdir))
  options = hypotheses.SearchOptions(decoding.Search(beam_size=3, n_best=3, max_extra_len=2))
  sources = inference.encode_lines(SOURCES, model.vocab, model.max_len)
  (rows, (inputs,)), = inference.length_batches({i: (ids,) for i, ids in sources.items()}, 8,
                                                64, progress=False)
  tokens = hypotheses.make_search_fn(model, options)(inputs, 0)[0]
  limits = [len(sources[i]) + 2 for i in rows]
  outputs = [(out, limit) for row, limit in zip(tokens, limits) for out in decoding.trim(row)]
  assert sum(len(out) + 1 == limit for out, limit in outputs) >= 5
  vocab = model.vocab
  assert sum(vocab.encode_target(vocab.decode(out)) != out + [EOS_ID]
             for out, _ in outputs) >= 3


@pytest.mark.parametrize('flags', [['--beam_size', '3', '--n_best', '3'],
                                   ['--beam_size', '1', '--scores'],
                                   ['--sample', '--scores']])
def test_rescoring_a_printed_output_gives_its_printed_score(workdir, tmp_path, flags):
  """Every n-best entry and 1-best --scores line, at the length limit or re-segmented:
  transformer-jax-score on its text gives its log_prob, and its score is that over the
  length penalty of the text's tokens; n-best lists are sorted by score, texts distinct."""
  lines = _translate(tmp_path, '--workdir', str(workdir), '--max_extra_len', '2', *flags)
  if '--n_best' in flags:
    entries = [(LINES[int(f[0])], *f[1:]) for f in (line.split(' ||| ') for line in lines)]
  else:
    entries = [(source, *line.split(' ||| ')) for source, line in zip(LINES, lines) if line]
  assert len(entries) >= len(SOURCES)
  rescored = _score_texts(workdir, tmp_path, [e[0] for e in entries], [e[1] for e in entries])
  np.testing.assert_allclose([float(e[3]) for e in entries], rescored, atol=5e-5, rtol=0)
  vocab = inference.load_model(str(workdir)).vocab
  lengths = np.asarray([len(vocab.encode_target(e[1])) for e in entries])
  alpha = 0.6  # the CLI's default
  np.testing.assert_allclose([float(e[2]) for e in entries],
                             np.asarray(rescored) / ((5 + lengths) / 6) ** alpha, atol=5e-5)
  for source in set(e[0] for e in entries):
    mine = [e for e in entries if e[0] == source]
    assert [float(e[2]) for e in mine] == sorted((float(e[2]) for e in mine), reverse=True)
    assert len({e[1] for e in mine}) == len(mine)


def test_alignment_covers_every_output_word_within_bounds(workdir, tmp_path):
  lines = _translate(tmp_path, '--workdir', str(workdir), '--beam_size', '2', '--alignment')
  for source, line in zip(LINES, lines):
    if not source.strip():
      assert line == ''
      continue
    hypothesis, alignment = line.split(' ||| ')
    pairs = [tuple(map(int, pair.split('-'))) for pair in alignment.split()]
    assert all(0 <= i < len(source.split()) for i, _ in pairs)
    assert {j for _, j in pairs} == set(range(len(hypothesis.split())))


# Words as written: a zero-width space as a word of its own, a left-to-right mark and BOMs
# inside and between words, a BOM and a space starting a line, characters the vocabulary
# lacks ('xyz': one piece, written ' ⁇ '); every word is several pieces or follows one.
ODD_LINES = ['bad \u200b face cab', 'dead\u200e bead fad', 'cab \ufeffface \ufeff ace',
             'bad xyz face', '\ufeff ace fad']


def _echo_search(model, options, mesh=None):
  """A search that outputs each source (its ids, EOS) attending to the source token at its
  own position (`hypotheses.SearchFn`)."""
  def search_fn(inputs, batch_number):
    rows, width = inputs.shape
    attention = np.broadcast_to(np.eye(width), (rows, 1, width, width))
    return inputs[:, None, :], np.zeros((rows, 1)), np.zeros((rows, 1)), attention
  return search_fn


def test_alignments_index_the_words_as_written(workdir, monkeypatch):
  """Each output token aligned to the source token it copies: the pairs link each word to
  itself, counted as `line.split()` counts the input line and the output text."""
  monkeypatch.setattr(hypotheses, 'make_search_fn', _echo_search)
  model = inference.load_model(str(workdir))
  results = hypotheses.search_lines(ODD_LINES, model, hypotheses.SearchOptions(alignment=True),
                                    batch_size=8, progress=False)
  assert [h.text.split() for h, in results] == [
      ['bad', 'face', 'cab'], ['dead', 'bead', 'fad'], ['cab', 'face', 'ace'],
      ['bad', '\u2047', 'face'], ['ace', 'fad']]
  assert [h.alignment for h, in results] == [
      ((0, 0), (2, 1), (3, 2)), ((0, 0), (1, 1), (2, 2)), ((0, 0), (1, 1), (3, 2)),
      ((0, 0), (1, 1), (2, 2)), ((1, 0), (2, 1))]


def test_token_spans_cover_the_words_their_characters_are_in(workdir):
  """Source and output tokens (unknown ones, invisible characters, several pieces a word)
  are given the word of `text.split()` their visible characters lie in."""
  vocab = inference.load_model(str(workdir)).vocab
  emitted = np.random.default_rng(0).integers(2, 16, (20, 12))  # <unk> and pieces
  outputs = [vocab.decode_spans(ids) for ids in emitted]
  assert [text for text, _ in outputs] == [vocab.decode(ids) for ids in emitted]
  assert any('\u2047' in text for text, _ in outputs)
  for text, spans in [(line, vocab.spans(line)) for line in ODD_LINES[:4]] + outputs:
    assert_words_of_their_characters(text, spans)


def assert_words_of_their_characters(text, spans):
  """`scoring.span_words` gives each token (its characters of `text`: `spans`) the word its
  visible characters lie in (-1 if it has none), and every word with one has a token."""
  words = scoring.span_words(text, spans)
  starts = [m.start() for m in regex.finditer(r'\S+', text)] + [len(text)]
  for (begin, end), word in zip(spans, words, strict=True):
    visible = [i for i in range(begin, end) if not regex.match(f'[\\s{INVISIBLE}]', text[i])]
    assert (word == -1) == (not visible)
    assert all(starts[word] <= i < starts[word + 1] for i in visible)
  assert set(words) - {-1} == {w for w, word in enumerate(text.split())
                               if regex.sub(f'[{INVISIBLE}]', '', word)}


def test_every_output_word_is_aligned_to_a_visible_input_word(workdir, tmp_path):
  """The random model's samples of ODD_LINES (which hold unknown pieces, ' ⁇ ')."""
  lines = _translate(tmp_path, '--workdir', str(workdir), '--sample', '--max_extra_len', '10',
                     '--alignment', lines=ODD_LINES)
  assert any('\u2047' in line.split(' ||| ')[0] for line in lines)
  for source, line in zip(ODD_LINES, lines, strict=True):
    hypothesis, alignment = line.split(' ||| ')
    pairs = [tuple(map(int, pair.split('-'))) for pair in alignment.split()]
    words = source.split()
    assert all(regex.sub(f'[{INVISIBLE}]', '', words[i]) for i, _ in pairs)
    assert {j for _, j in pairs} == set(range(len(hypothesis.split())))


def test_ensembles_of_one_and_of_two_copies_decode_as_the_model(workdir, tmp_path):
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  for flags in (['--beam_size', '1'], ['--beam_size', '3', '--n_best', '2']):
    single = _translate(tmp_path, '--workdir', str(workdir), '--scores', *flags)
    pair = _translate(tmp_path, '--workdir', f'{workdir},{copy}', '--scores', *flags)
    assert inference.load_ensemble([str(workdir)]).decoder.config == inference.load_model(
        str(workdir)).decoder.config
    for one, two in zip(single, pair, strict=True):
      one, two = one.split(' ||| '), two.split(' ||| ')
      assert one[:-2] == two[:-2]  # index and hypothesis
      np.testing.assert_allclose([float(x) for x in one[-2:] if x],
                                 [float(x) for x in two[-2:] if x], atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(workdir, tmp_path):
  sample = lambda seed: _translate(tmp_path, '--workdir', str(workdir), '--sample', '--seed',
                                   str(seed), '--top_p', '0.95', '--batch_size', '4')
  first = sample(1)
  assert sample(1) == first
  assert sample(2) != first
  assert [bool(line) for line in first] == [bool(line.strip()) for line in LINES]


@pytest.mark.parametrize('flags, message', [
    (['--n_best', '5', '--beam_size', '4'], '--n_best must be in [1, beam_size=4], got 5'),
    (['--n_best', '2', '--sample'], '--n_best must be 1 with --sample, got 2'),
    (['--sample', '--top_p', '1.5'], '--top_p must be in (0, 1], got 1.5'),
    (['--top_k', '5'], '--top_k needs --sample'),
    (['--sample', '--temperature', '0'], '--temperature must be > 0'),
])
def test_bad_decoding_flags_are_one_line_errors(tmp_path, capsys, flags, message):
  assert translate.main(['--workdir', str(tmp_path), *flags]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'transformer-jax-translate: error: {message}') and err.count('\n') == 1


def test_unaligned_scoring_files_are_one_line_errors(workdir, files, tmp_path, capsys):
  short = tmp_path / 'short.txt'
  short.write_text('ace\n', encoding='utf-8')
  assert score.main(['--workdir', str(workdir), '--source', str(files / 'in.txt'),
                     '--target', str(short)]) == 2
  assert capsys.readouterr().err == (f'transformer-jax-score: error: {files / "in.txt"} has '
                                     f'{len(LINES)} lines but {short} 1\n')


def test_ensemble_members_with_another_vocabulary_are_refused(workdir, files, tmp_path,
                                                             tiny_config, capsys):
  (tmp_path / 'other').mkdir()
  other = make_workdir(tmp_path / 'other', tiny_config, vocab_seed=1)
  expected = (f'error: ensemble members need one vocabulary: {other} has another than '
              f'{workdir} ({other / "spm.model"} and {workdir / "spm.model"} differ)\n')
  assert translate.main(['--workdir', str(workdir), '--workdir', str(other),
                         '--input', str(files / 'in.txt')]) == 2
  assert capsys.readouterr().err == 'transformer-jax-translate: ' + expected
  assert score.main(['--workdir', f'{workdir},{other}', '--source', str(files / 'in.txt'),
                     '--target', str(files / 'in.txt')]) == 2
  assert capsys.readouterr().err == 'transformer-jax-score: ' + expected
