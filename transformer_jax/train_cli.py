"""Command line: `transformer-jax-train --config=configs/base.py --workdir=DIR [--config.key=v]`.

Bad input (unknown config key, unreadable config, incompatible checkpoint, unwritable workdir,
non-finite loss) or a checkpoint that cannot be written (disk full) ends with one clear line
on stderr and exit status 1.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training config file, e.g. configs/demo.py or configs/table3.py:A1.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and vocabulary.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # After flag parsing: JAX starts here.
  from transformer_jax import checkpoint, distributed, train_lib
  quiet_checkpoint_info()
  drop_closed_loop_callbacks()
  try:
    distributed.initialize()  # multi-host: from JAX_* env or the cluster (docs/scaling.md)
    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError, OSError) as e:
    logging.error('%s', e)
    if isinstance(e, checkpoint.CheckpointSaveError):
      # The writes orbax abandoned keep failing until the process ends (asyncio's
      # 'exception was never retrieved', 'Event loop is closed' during shutdown): after
      # the one line, nothing else reaches stderr.
      print(f'error: {e}', file=sys.stderr, flush=True)
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
      sys.exit(1)
    sys.exit(f'error: {e}')


def quiet_checkpoint_info() -> None:
  """Drop the INFO chatter of orbax and of TensorFlow's checkpointing of the data iterator
  (several lines per save) from the absl log, and orbax's tracebacks from its writer
  threads (a failed save is reported once, by checkpoint.CheckpointSaveError); keep
  warnings."""
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
  """Console-script entry point; unknown `--config.*` keys fail before training starts."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except (KeyError, AttributeError, ValueError, OSError) as e:
    sys.exit(f'error: bad --config flag: {_one_line(e)}')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag ends with one line: a config file that fails to
  load (e.g. `configs/table3.py:Z9`) gives its error, not the traceback flags carries."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    detail = f' {lines[-1].strip()}' if len(lines) > 1 else ''
    sys.exit(f'error: {lines[0]}{detail}')


def _one_line(error: BaseException) -> str:
  """The innermost message of ml_collections' nested (Attribute(Key)) errors, on one line."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  if isinstance(error, KeyError):
    message = f'unknown config key {message}'
  return ' '.join(message.split())
