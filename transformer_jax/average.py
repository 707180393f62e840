"""Command line: average the last N checkpoints of a training workdir (paper: 5 base, 20 big).

  python -m transformer_jax.average_cli --workdir=runs/base --num_last=5

writes `<workdir>/averaged`, which `checkpoint.load_for_inference` then prefers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from transformer_jax import checkpoint


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Parse `argv`, average, print and return the output path; errors exit with one line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='training workdir (has checkpoints/)')
  parser.add_argument('--num_last', type=int, default=5, help='how many last checkpoints')
  args = parser.parse_args(argv)
  try:
    path = checkpoint.average_checkpoints(args.workdir, args.num_last)
  except checkpoint.CheckpointError as e:
    raise SystemExit(f'error: {e}') from None
  print(path)
  return path


def run() -> None:
  """Console-script entry point `transformer-jax-average`."""
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  main(sys.argv[1:])


if __name__ == '__main__':
  run()
