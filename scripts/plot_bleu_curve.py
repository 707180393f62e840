"""Plot sacreBLEU against training minutes: the demo's metrics.jsonl beside the torch peer's.

  python scripts/plot_bleu_curve.py --jax workdir_demo/metrics.jsonl \
      --torch benchmarks/results/torch_bleu.jsonl --out docs/bleu_curve.png

JAX points are the `eval/bleu` records (with `train/minutes`) of a run trained with
`--config.decode_split=test --config.decode_sentences=-1`; torch points come from
`benchmarks/torch_peer.py` (`minutes`, `test_bleu`).
"""

from __future__ import annotations

import argparse
import json


def _records(path: str) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def jax_curve(path: str) -> tuple[list[float], list[float]]:
  points = [(r['train/minutes'], r['eval/bleu']) for r in _records(path) if 'eval/bleu' in r]
  return [m for m, _ in points], [b for _, b in points]


def torch_curve(path: str) -> tuple[list[float], list[float]]:
  points = sorted((r['minutes'], r['test_bleu']) for r in _records(path))
  return [m for m, _ in points], [b for _, b in points]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jax', required=True)
  parser.add_argument('--torch', default=None)
  parser.add_argument('--out', default='docs/bleu_curve.png')
  parser.add_argument('--title', default='English→Spanish Bible, held-out books, 2 CPU cores')
  args = parser.parse_args()
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
  ax.plot(*jax_curve(args.jax), 'o-', label='transformer_jax demo (configs/demo.py)')
  if args.torch:
    ax.plot(*torch_curve(args.torch), 's--', label='PyTorch nn.Transformer peer')
  ax.set_xlabel('training minutes (evaluation excluded)')
  ax.set_ylabel('sacreBLEU (greedy)')
  ax.set_title(args.title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
