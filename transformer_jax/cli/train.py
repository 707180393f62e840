"""Command line: `transformer-jax-train --config=configs/base.py --workdir=DIR [--config.key=v]`.

`--config=path.py[:arg]` names a config file (`config.load_config`); `--config.<key>=<value>`
overrides one of its keys (dotted for `model.*`), parsed as the key's type. Bad input
(unknown config key, unreadable config, incompatible checkpoint, unwritable workdir, bad
data, non-finite loss, a checkpoint the disk cannot hold) ends with one line on stderr and
exit status 2 (`cli`).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import logging

from transformer_jax import cli
from transformer_jax.training import config as config_lib
from transformer_jax.workdir import Workdir

PROG = 'transformer-jax-train'
_OVERRIDE = '--config.'


def parse(argv: Sequence[str]) -> tuple[object, str]:
  """(the ConfigDict with its overrides applied, the workdir) of the command line."""
  parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True,
                      help='config file, e.g. configs/demo.py or configs/table3.py:A1')
  parser.add_argument('--workdir', required=True,
                      help='directory for checkpoints, logs and vocabulary')
  args, rest = parser.parse_known_args(argv)
  overrides = []
  while rest:
    flag = rest.pop(0)
    if not flag.startswith(_OVERRIDE):
      raise cli.UserError(f'unrecognized arguments: {flag}')
    key, eq, value = flag[len(_OVERRIDE):].partition('=')
    if not eq:
      if not rest:
        raise cli.UserError(f'{flag} needs a value')
      value = rest.pop(0)
    overrides.append((key, value))
  try:
    config = config_lib.load_config(args.config)
  except Exception as e:  # noqa: BLE001 - whatever the config file raises: one line.
    raise cli.UserError(f'--config={args.config}: {type(e).__name__}: {e}') from None
  for key, value in overrides:
    try:
      config_lib.apply_override(config, key, value)
    except KeyError as e:
      raise cli.UserError(f'bad --config flag: unknown config key {e.args[0]}') from None
    except (ValueError, TypeError, SyntaxError) as e:
      raise cli.UserError(f'bad --config flag: {e}') from None
  return config, args.workdir


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parse flags, then train; returns the exit code (2 with one line for user errors)."""
  return cli.run_main(PROG, lambda: _train(*parse(sys.argv[1:] if argv is None else argv)),
                      (ValueError, FloatingPointError, OSError))


def _train(config, workdir: str) -> None:
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  log_to_workdir(Workdir(workdir).log)
  quiet_checkpoint_info()
  from transformer_jax.training import distributed, train_lib  # after flag parsing: JAX starts here.
  distributed.initialize()  # multi-host: from JAX_* env or the cluster (docs/scaling.md)
  train_lib.train_and_evaluate(config, workdir)


def log_to_workdir(path: str) -> None:
  """Every log record, at INFO and above and with its traceback, appended to `path` (the
  workdir's train.log), whatever the console shows (nothing if it cannot be written)."""
  import logging as std_logging
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = std_logging.FileHandler(path, encoding='utf-8')
  except OSError:
    return  # an unwritable workdir: the training set-up says so in one line
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  std_logging.getLogger().addHandler(handler)


def quiet_checkpoint_info() -> None:
  """Keep the INFO chatter of orbax and of TensorFlow's checkpointing of the data iterator
  (several lines per save), and orbax's tracebacks from its writer threads (a failed save
  is reported in one line, `checkpoint.CheckpointSaveError`), off the console; they stay
  in the workdir's log (`log_to_workdir`). Warnings still show."""
  import logging as std_logging
  chatty = ('/orbax/', '/tensorflow/python/checkpoint/')
  logging.get_absl_handler().addFilter(
      lambda r: not any(p in r.pathname for p in chatty)
      or (r.levelno >= std_logging.WARNING and not r.exc_info))


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
