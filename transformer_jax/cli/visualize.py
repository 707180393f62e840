"""Attention heatmaps like the paper's Figures 3-5.

`python -m transformer_jax.cli.visualize --workdir DIR --sentence "..." --output_dir OUT`
translates the sentence, runs one teacher-forced pass over (sentence, translation) and
writes one PNG per layer and attention kind (all heads side by side), labelled with the
subword pieces: `encoder_self_layer{i}.png`, `decoder_self_layer{i}.png`,
`encoder_decoder_layer{i}.png`. Decoder rows are labelled with the token each position
emits; decoder self-attention columns with the token each position reads (`<s>` first).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transformer_jax import cli, decoding, inference  # noqa: E402
from transformer_jax.model import Transformer  # noqa: E402
from transformer_jax.model_config import EOS_ID  # noqa: E402

INCHES_PER_TOKEN = 0.28
HEADS_PER_ROW = 4
KINDS = ('encoder_self', 'decoder_self', 'encoder_decoder')


@jax.jit
def _sown_intermediates(model: decoding.Model, src: jax.Array, tgt: jax.Array) -> Any:
  """The forward pass's sown intermediates (attention weights), as one compiled program."""
  _, state = Transformer(model.config).apply({'params': model.params}, src, tgt,
                                             mutable=['intermediates'])
  return state['intermediates']


def collect_attention(model: decoding.Model, source: Sequence[int],
                      target: Sequence[int]) -> dict[str, list[np.ndarray]]:
  """Teacher-forced attention weights of one sentence pair.

  Returns per kind (`KINDS`) a list over layers of [N, Q, K] arrays:
  encoder_self [N, S, S], decoder_self [N, T, T], encoder_decoder [N, T, S].
  """
  config = model.config
  inter = _sown_intermediates(model, jnp.asarray([source], jnp.int32),
                              jnp.asarray([target], jnp.int32))
  weights = lambda stack, i, name: np.asarray(stack[f'layer_{i}'][name]['attention_weights'][0][0])
  enc, dec = inter['encoder'], inter['decoder']
  return {
      'encoder_self': [weights(enc, i, 'self_attention') for i in range(config.num_encoder_layers)],
      'decoder_self': [weights(dec, i, 'self_attention') for i in range(config.num_decoder_layers)],
      'encoder_decoder': [weights(dec, i, 'cross_attention')
                          for i in range(config.num_decoder_layers)],
  }


def plot_heads(weights: np.ndarray, query_labels: Sequence[str], key_labels: Sequence[str],
               title: str, path: str, dpi: int = 100) -> None:
  """Write one PNG of [N, Q, K] attention weights, one labelled heatmap per head.

  The image grows with the number of tokens (INCHES_PER_TOKEN per row/column).
  """
  heads, queries, keys = weights.shape
  if (queries, keys) != (len(query_labels), len(key_labels)):
    raise ValueError(f'weights {weights.shape} do not match {len(query_labels)} query and '
                     f'{len(key_labels)} key labels')
  cols = min(heads, HEADS_PER_ROW)
  rows = math.ceil(heads / cols)
  cell_w, cell_h = 1.2 + INCHES_PER_TOKEN * keys, 1.2 + INCHES_PER_TOKEN * queries
  fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_w, rows * cell_h + 0.5),
                           squeeze=False, layout='constrained')
  for h, ax in enumerate(axes.flat):
    if h >= heads:
      ax.axis('off')
      continue
    ax.imshow(weights[h], cmap='viridis', vmin=0.0, vmax=1.0, aspect='equal')
    ax.set_title(f'head {h}', fontsize=9)
    ax.set_xticks(range(keys), key_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(queries), query_labels, fontsize=7)
  fig.suptitle(title)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def save_attention_maps(attention: dict[str, list[np.ndarray]], source_pieces: Sequence[str],
                        target_pieces: Sequence[str], output_dir: str) -> list[str]:
  """Write every layer's heatmaps of `collect_attention` output; returns the paths."""
  os.makedirs(output_dir, exist_ok=True)
  decoder_inputs = ['<s>'] + list(target_pieces[:-1])
  labels = {'encoder_self': (source_pieces, source_pieces),
            'decoder_self': (target_pieces, decoder_inputs),
            'encoder_decoder': (target_pieces, source_pieces)}
  titles = {'encoder_self': 'encoder self-attention',
            'decoder_self': 'decoder self-attention (masked)',
            'encoder_decoder': 'encoder-decoder attention'}
  paths = []
  for kind in KINDS:
    for layer, weights in enumerate(attention[kind]):
      path = os.path.join(output_dir, f'{kind}_layer{layer}.png')
      plot_heads(weights, *labels[kind], f'{titles[kind]}, layer {layer}', path)
      paths.append(path)
  return paths


PROG = 'transformer-jax-visualize'


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
  parser = cli.ArgumentParser(prog=PROG,
                              description='Attention heatmaps of one translated sentence.')
  parser.add_argument('--workdir', required=True, help='training directory with checkpoints')
  parser.add_argument('--sentence', required=True, help='source sentence')
  parser.add_argument('--output_dir', required=True, help='where to write the PNGs')
  parser.add_argument('--beam_size', type=int, default=4, help='1 means greedy decoding')
  parser.add_argument('--alpha', type=float, default=0.6, help='length penalty exponent')
  return cli.run_main(PROG, lambda: _visualize(parser.parse_args(argv)))


def _visualize(args) -> None:
  if not args.sentence.strip():
    raise cli.UserError('--sentence is empty')
  search = cli.search_options(beam_size=args.beam_size, alpha=args.alpha)
  model = inference.load_model(args.workdir)
  ids = model.vocab.encode(args.sentence)
  source = inference.fit_source(ids, model.max_len)
  if len(ids) > len(source):
    print(f'{PROG}: warning: the sentence has {len(ids)} tokens, cut to the model\'s '
          f'max_len {len(source)}', file=sys.stderr)
  output = inference.make_decode_fn(model.decoder, search)(np.asarray([source], np.int32))
  target = (decoding.trim(output.best)[0] + [EOS_ID])[:model.max_len]
  attention = collect_attention(model.decoder, source, target)
  try:
    paths = save_attention_maps(attention, model.vocab.pieces(source),
                                model.vocab.pieces(target), args.output_dir)
  except OSError as e:
    raise cli.UserError(f'cannot write {e.filename}: {e.strerror}') from None
  print(f'translation: {model.vocab.decode(target)}')
  print(f'wrote {len(paths)} heatmaps to {args.output_dir}')


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
