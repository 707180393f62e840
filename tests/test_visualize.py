"""Attention heatmaps: files, sizes, weights from the model, and the CLI."""

import matplotlib.image
import numpy as np
import pytest

from test_translate import make_workdir
from transformer_jax import decoding, inference
from transformer_jax.cli import visualize


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, tiny_config):
  """A real training workdir (`make_workdir`) of a model with max_len 8: sentences cut to
  it plot small heatmaps."""
  return make_workdir(tmp_path_factory.mktemp('workdir'), tiny_config.replace(max_len=8))


def _random_weights(rng, heads, queries, keys):
  w = rng.random((heads, queries, keys))
  return w / w.sum(-1, keepdims=True)


def _pixels(path):
  return matplotlib.image.imread(path).shape[:2]


def test_heatmaps_are_written_and_grow_with_tokens(tmp_path):
  rng = np.random.default_rng(0)
  sizes = {}
  for n in (4, 12):
    source = [f's{i}' for i in range(n)]
    target = [f't{i}' for i in range(n + 1)]
    attention = {'encoder_self': [_random_weights(rng, 4, n, n)] * 2,
                 'decoder_self': [_random_weights(rng, 4, n + 1, n + 1)] * 2,
                 'encoder_decoder': [_random_weights(rng, 4, n + 1, n)] * 2}
    out = tmp_path / str(n)
    paths = visualize.save_attention_maps(attention, source, target, str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f'{kind}_layer{i}.png' for kind in visualize.KINDS for i in (0, 1))
    assert len(paths) == 6
    sizes[n] = _pixels(out / 'encoder_decoder_layer1.png')
  assert sizes[12][0] > sizes[4][0] and sizes[12][1] > sizes[4][1]


def test_labels_must_match_weights(tmp_path):
  with pytest.raises(ValueError, match='do not match'):
    visualize.plot_heads(np.zeros((2, 3, 4)), ['a'] * 3, ['b'] * 3, 't', str(tmp_path / 'x.png'))


def test_collect_attention_shapes(tiny_config, tiny_params):
  attention = visualize.collect_attention(decoding.Model(tiny_params, tiny_config),
                                          [5, 6, 7, 1], [8, 9, 1])
  assert [w.shape for w in attention['encoder_self']] == [(4, 4, 4)] * 2
  assert [w.shape for w in attention['decoder_self']] == [(4, 3, 3)] * 2
  assert [w.shape for w in attention['encoder_decoder']] == [(4, 3, 4)] * 2
  np.testing.assert_allclose(attention['encoder_decoder'][1].sum(-1), 1.0, atol=1e-5)
  assert np.triu(attention['decoder_self'][0][0], 1).max() == 0.0


def test_cli_writes_heatmaps(workdir, tmp_path, capsys):
  out = tmp_path / 'maps'
  assert visualize.main(['--workdir', str(workdir), '--sentence', 'bad face', '--output_dir',
                         str(out), '--beam_size', '1']) == 0
  assert len(list(out.glob('*.png'))) == 3 * 2
  assert 'translation:' in capsys.readouterr().out
  max_len = inference.load_model(str(workdir)).max_len
  assert visualize.main(['--workdir', str(workdir), '--sentence', 'bad face ' * max_len,
                         '--output_dir', str(out), '--beam_size', '1']) == 0
  assert f"cut to the model's max_len {max_len}" in capsys.readouterr().err
  assert visualize.main(['--workdir', str(tmp_path / 'nope'), '--sentence', 'x',
                         '--output_dir', str(out)]) == 2
  assert 'does not exist' in capsys.readouterr().err
  for option, message in [(['--beam_size', '0'], '--beam_size must be >= 1'),
                          (['--alpha', '-1'], '--alpha must be'),
                          (['--output_dir', str(out / 'encoder_self_layer0.png' / 'x')],
                           'cannot write')]:
    assert visualize.main(['--workdir', str(workdir), '--sentence', 'bad face', '--output_dir',
                           str(out), '--beam_size', '1', *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith('transformer-jax-visualize: error: ') and message in err and err.count('\n') == 1
