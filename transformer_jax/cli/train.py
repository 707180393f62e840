"""Command line: `transformer-jax-train --config=configs/base.py --workdir=DIR [--config.key=v]`.

`--config=path.py[:arg]` names a config file (`config.load_config`); `--config.<key>=<value>`
overrides one of its keys (dotted for `model.*`), parsed as the key's type. Bad input
(unknown config key, unreadable config, incompatible checkpoint, unwritable workdir, bad
data, non-finite loss, a checkpoint the disk cannot hold) ends with one line on stderr and
exit status 2 (`cli`).
"""

from __future__ import annotations

import sys
import threading
from typing import Optional, Sequence

from absl import logging

from transformer_jax import cli
from transformer_jax.training import config as config_lib

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
    except KeyError:
      raise cli.UserError(f"bad --config flag: unknown config key '{key}'") from None
    except (ValueError, TypeError, SyntaxError) as e:
      raise cli.UserError(f'bad --config flag: {e}') from None
  return config, args.workdir


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parse flags, then train; returns the exit code (2 with one line for user errors)."""
  from transformer_jax.checkpoint import CheckpointSaveError  # orbax (starts no backend)
  # After a failed save, the writes orbax abandoned keep failing until the process ends
  # (asyncio's 'exception was never retrieved', 'Event loop is closed'): the one line is all.
  return cli.run_main(PROG, lambda: _train(*parse(sys.argv[1:] if argv is None else argv)),
                      (ValueError, FloatingPointError, OSError),
                      silence_after=(CheckpointSaveError,))


def _train(config, workdir: str) -> None:
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  quiet_checkpoint_info()
  drop_closed_loop_callbacks()
  from transformer_jax.training import distributed, train_lib  # after flag parsing: JAX starts here.
  distributed.initialize()  # multi-host: from JAX_* env or the cluster (docs/scaling.md)
  train_lib.train_and_evaluate(config, workdir)


def quiet_checkpoint_info() -> None:
  """Drop the INFO chatter of orbax and of TensorFlow's checkpointing of the data iterator
  (several lines per save) from the absl log, and orbax's tracebacks from its writer
  threads (a failed save is reported once, by checkpoint.CheckpointSaveError); keep
  warnings."""
  import logging as std_logging
  chatty = ('/orbax/', '/tensorflow/python/checkpoint/')
  logging.get_absl_handler().addFilter(
      lambda r: not any(p in r.pathname for p in chatty)
      or (r.levelno >= std_logging.WARNING and not r.exc_info))


def drop_closed_loop_callbacks() -> None:
  """Drop the 'Event loop is closed' traceback that tensorstore prints (through
  sys.excepthook, from its own threads) for every write still in flight when a failed
  save ends orbax's event loop: hundreds for a big model. The failure itself is reported
  once, as checkpoint.CheckpointSaveError."""
  previous = sys.excepthook

  def hook(kind, value, traceback):
    if not (kind is RuntimeError and str(value) == 'Event loop is closed'
            and threading.current_thread() is not threading.main_thread()):
      previous(kind, value, traceback)
  sys.excepthook = hook


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())
