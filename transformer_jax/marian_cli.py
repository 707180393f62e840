"""Command lines for Marian / OPUS-MT models in Transformers' format (no network):

  transformer-jax-import --from_hf opus-mt-en-de/ --workdir runs/en-de   # then translate
  transformer-jax-export --workdir runs/demo_postln --to_hf exported/    # post-LN models

`--from_hf` is a `MarianMTModel.save_pretrained` directory (config.json, model.safetensors
or pytorch_model.bin, source.spm, target.spm, vocab.json). A directory that is not such a
checkpoint, an architecture option this library lacks, a missing SentencePiece model or a
model that cannot be exported (pre-LN) ends with one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from transformer_jax import checkpoint, marian


def _run(prog: str, action: Callable[[], str]) -> int:
  """Run `action`, print what it returns; user errors -> one line on stderr, 2."""
  try:
    print(action())
  except (marian.ConversionError, checkpoint.CheckpointError) as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 2
  return 0


def import_main(argv: Optional[Sequence[str]] = None) -> int:
  """`transformer-jax-import`: a Marian directory -> a new workdir; returns the exit code."""
  parser = argparse.ArgumentParser(prog='transformer-jax-import',
                                   description='Import a Marian / OPUS-MT model.')
  parser.add_argument('--from_hf', required=True, help='MarianMTModel save_pretrained dir')
  parser.add_argument('--workdir', required=True, help='new workdir to write (must be empty)')
  args = parser.parse_args(argv)
  return _run(parser.prog, lambda: marian.import_marian(args.from_hf, args.workdir))


def export_main(argv: Optional[Sequence[str]] = None) -> int:
  """`transformer-jax-export`: a post-LN workdir -> a MarianMTModel directory."""
  parser = argparse.ArgumentParser(prog='transformer-jax-export',
                                   description='Export a post-LN model as a MarianMTModel.')
  parser.add_argument('--workdir', required=True, help='workdir with checkpoints or averaged/')
  parser.add_argument('--to_hf', required=True, help='output directory')
  args = parser.parse_args(argv)
  return _run(parser.prog, lambda: '\n'.join(marian.export_marian(args.workdir, args.to_hf)))


def run_import() -> None:
  """Console-script entry point `transformer-jax-import`."""
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  sys.exit(import_main())


def run_export() -> None:
  """Console-script entry point `transformer-jax-export`."""
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  sys.exit(export_main())


if __name__ == '__main__':
  sys.exit('use transformer-jax-import or transformer-jax-export')
