"""Command line: average the last N checkpoints of a training workdir (paper: 5 base, 20 big).

  transformer-jax-average --workdir=runs/base --num_last=5

writes `<workdir>/averaged`, which inference (`checkpoint.load_params`) then prefers.
Errors: one line on stderr, exit 2 (`cli`).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from transformer_jax import checkpoint, cli

PROG = 'transformer-jax-average'


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parse `argv`, average and print the output path; returns the exit code."""
  parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='training workdir (has checkpoints/)')
  parser.add_argument('--num_last', type=int, default=5, help='how many last checkpoints')
  return cli.run_main(PROG, lambda: _average(parser.parse_args(argv)))


def _average(args) -> None:
  print(checkpoint.average_checkpoints(args.workdir, args.num_last))


def run() -> None:
  """Console-script entry point."""
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  sys.exit(main(sys.argv[1:]))


if __name__ == '__main__':
  run()
