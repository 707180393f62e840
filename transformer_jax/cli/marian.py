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
from typing import Callable, Mapping, Optional, Sequence

from transformer_jax import cli
from transformer_jax.interop import marian


def _main(prog: str, description: str, flags: Mapping[str, str],
          action: Callable[[argparse.Namespace], str], argv: Optional[Sequence[str]]) -> int:
  """Parse the required `flags` (name -> help), run `action` and print what it returns;
  returns the exit code (2 with one line on stderr for a user error, see `cli`)."""
  parser = cli.ArgumentParser(prog=prog, description=description)
  for flag, help_text in flags.items():
    parser.add_argument(f'--{flag}', required=True, help=help_text)
  return cli.run_main(prog, lambda: print(action(parser.parse_args(argv))),
                      (marian.ConversionError,))


def import_main(argv: Optional[Sequence[str]] = None) -> int:
  """`transformer-jax-import`: a Marian directory -> a new workdir; returns the exit code."""
  return _main('transformer-jax-import', 'Import a Marian / OPUS-MT model.', {
      'from_hf': 'MarianMTModel save_pretrained directory',
      'workdir': 'new workdir to write (must not exist or be empty)'},
      lambda args: marian.import_marian(args.from_hf, args.workdir), argv)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
  """`transformer-jax-export`: a post-LN workdir -> a MarianMTModel directory."""
  return _main('transformer-jax-export', 'Export a post-LN model as a MarianMTModel.', {
      'workdir': 'workdir with checkpoints or averaged/', 'to_hf': 'output directory'},
      lambda args: '\n'.join(marian.export_marian(args.workdir, args.to_hf)), argv)


def run_import() -> None:
  """Console-script entry point `transformer-jax-import`."""
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  sys.exit(import_main())


def run_export() -> None:
  """Console-script entry point `transformer-jax-export`."""
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  sys.exit(export_main())


COMMANDS = {'import': run_import, 'export': run_export}


def run() -> None:
  """`python -m transformer_jax.cli.marian import|export FLAGS...`."""
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print('usage: python -m transformer_jax.cli.marian import|export [flags]', file=sys.stderr)
    sys.exit(2)
  COMMANDS[sys.argv.pop(1)]()


if __name__ == '__main__':
  run()
