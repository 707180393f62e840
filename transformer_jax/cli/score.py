"""Score given translations: `transformer-jax-score --workdir DIR --source F --target F`.

Writes, for each line-aligned (source, target) pair, the model's log-probability of the
target given the source (nats, the sum over the target's tokens, EOS included;
`--normalise`: their mean), from one teacher-forced forward pass per batch: for filtering
and reranking. `--per_token` adds a tab and each target token's log-probability,
space-separated, EOS last. Pairs are batched by length as in translation (`--batch_size`
rows, lengths rounded up to powers of two); blank lines are scored (as EOS alone); lines
longer than the model's `max_len` tokens are cut to it (EOS kept), with a warning.
Several `--workdir`s score as an ensemble (the mean of the members' log-probabilities).
Targets are split with the target vocabulary (an imported model's target.spm); the score
of an output that `transformer-jax-translate` printed is the score it printed.
Unequal line counts, a bad flag, or a missing or incompatible checkpoint end with one
line on stderr, exit 2 (`cli`). The work is done by `transformer_jax.hypotheses`.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from transformer_jax import cli, hypotheses, inference

PROG = 'transformer-jax-score'


def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
  cli.add_workdir_argument(parser)
  parser.add_argument('--source', required=True, help='source sentences, one per line')
  parser.add_argument('--target', required=True, help='their translations, one per line')
  parser.add_argument('--output', help='file for the scores (default: stdout)')
  parser.add_argument('--normalise', action='store_true',
                      help='the mean log-probability per target token instead of the sum')
  parser.add_argument('--per_token', action='store_true',
                      help="add a tab and each target token's log-probability")
  parser.add_argument('--batch_size', type=int, default=32, help='pairs per batch')
  parser.add_argument('--no_progress', action='store_true', help='no progress bar on stderr')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
  return cli.run_main(PROG, lambda: _score(build_parser().parse_args(argv)))


def _score(args) -> None:
  if args.batch_size < 1:
    raise cli.UserError(f'--batch_size must be >= 1, got {args.batch_size}')
  sources, targets = cli.read_lines(args.source), cli.read_lines(args.target)
  if len(sources) != len(targets):
    raise cli.UserError(f'{args.source} has {len(sources)} lines but {args.target} '
                        f'{len(targets)}')
  model = inference.load_ensemble(args.workdir, task='translation')
  scores = hypotheses.score_lines(sources, targets, model, batch_size=args.batch_size,
                                  normalise=args.normalise, progress=not args.no_progress)
  cli.write_lines(args.output, [
      f'{total:.6f}' + ('\t' + ' '.join(f'{x:.6f}' for x in per_token) if args.per_token else '')
      for total, per_token in scores])


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
