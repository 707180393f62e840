"""What the command lines share: one flag system (argparse) and one error convention.

A user error (a bad flag, a missing or unreadable file, an incompatible checkpoint, a bad
config value or data file) ends with ONE line `<prog>: error: <message>` on stderr and exit
status 2; anything else is a bug and keeps its traceback. Library modules never import
this module or the CLIs (`train`, `translate`, `visualize`, `average`).
"""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

import jax

from transformer_jax import decoding
from transformer_jax.workdir import WorkdirError


class UserError(Exception):
  """A problem the user can fix (flags, paths); reported as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one line (`<prog>: error: ...`) and exit status 2."""

  def error(self, message: str) -> NoReturn:
    raise UserError(message)


def run_main(prog: str, body: Callable[[], None],
             user_errors: tuple[type[BaseException], ...] = ()) -> int:
  """Run `body`; a UserError, a `workdir.WorkdirError` or one of `user_errors` -> one line
  on stderr, returns 2.

  An error with a `log_path` (a failed checkpoint save, whose abandoned background writes
  keep printing until the process ends) names that file in its line, and the rest of
  stderr goes there (or, if it cannot be opened, stays on the console).
  """
  try:
    body()
  except (UserError, WorkdirError, *user_errors) as e:
    message = ' '.join(str(e).split()) or type(e).__name__
    log = _open_log(getattr(e, 'log_path', None))
    if log is not None:
      message += f'; what follows is in {log.name}'
    print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
    if log is not None:
      os.dup2(log.fileno(), sys.stderr.fileno())
    return 2
  return 0


def _open_log(path: Optional[str]) -> Optional[Any]:
  """`path` opened for appending, or None (no path, or it cannot be opened)."""
  try:
    return None if path is None else open(path, 'a', encoding='utf-8')
  except OSError:
    return None


def add_workdir_argument(parser: argparse.ArgumentParser) -> None:
  """`--workdir DIR`, given once, several times or comma-separated (an ensemble) -> a list."""
  parser.add_argument('--workdir', required=True, action='extend',
                      type=lambda value: [w for w in value.split(',') if w],
                      help='training directory with checkpoints; several (repeated or '
                      'comma-separated): an ensemble of models sharing one vocabulary')


def read_lines(path: Optional[str]) -> list[str]:
  """Lines of `path` (or stdin) without their line ends; a final newline adds no line, a
  UTF-8 byte-order mark at the start is skipped. UserError if a line is not UTF-8."""
  try:
    if path is None:
      data = sys.stdin.buffer.read()
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror}') from None
  data = data.removeprefix(codecs.BOM_UTF8)
  try:
    lines = data.decode('utf-8').split('\n')
  except UnicodeDecodeError:
    raise UserError(_not_utf8(path or '<stdin>', data)) from None
  if lines[-1] == '':
    lines.pop()
  return [line.rstrip('\r') for line in lines]


def _not_utf8(name: str, data: bytes, shown: int = 10) -> str:
  """'name:N: not UTF-8 (K lines: N, ...)' for the lines of `data` that do not decode."""
  bad = []
  for number, line in enumerate(data.split(b'\n'), start=1):
    try:
      line.decode('utf-8')
    except UnicodeDecodeError:
      bad.append(number)
  listed = ', '.join(map(str, bad[:shown])) + (', ...' if len(bad) > shown else '')
  return f'{name}:{bad[0]}: not UTF-8 ({len(bad)} line{"s" * (len(bad) > 1)}: {listed})'


def write_lines(path: Optional[str], lines: Sequence[str]) -> None:
  """Write `lines` to `path` (or stdout) as UTF-8, whatever the locale, like the input."""
  text = ''.join(line + '\n' for line in lines)
  if path is None:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode('utf-8'))
    sys.stdout.buffer.flush()
    return
  try:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
      f.write(text)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror}') from None



def default_cpu_devices() -> Optional[int]:
  """2 CPU devices (1 on a 1-core host), or None where the environment sets a count
  (JAX_NUM_CPU_DEVICES, or XLA_FLAGS' --xla_force_host_platform_device_count)."""
  if ('JAX_NUM_CPU_DEVICES' in os.environ
      or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')):
    return None
  return min(2, os.cpu_count() or 1)


def use_cpu_devices(count: int) -> None:
  """Have JAX present the host CPU as `count` devices (before its first computation).

  If JAX has already started (`main` called in-process), it keeps its devices, with a
  warning. Decoding loops on separate CPU devices run concurrently, which on this VM beat
  one device whose thread pool parallelises only the larger operations.
  """
  if count < 1:
    raise UserError(f'--cpu_devices must be >= 1, got {count}')
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    logging.warning('--cpu_devices %d not applied: JAX has already started with %d CPU '
                    'device(s)', count, len(jax.devices('cpu')))


def decoding_mesh(cpu_devices: Optional[int]) -> 'jax.sharding.Mesh':
  """A mesh of all of JAX's devices to decode on; on a CPU host JAX is first told to
  present the CPU as `cpu_devices` devices (None: `default_cpu_devices()`)."""
  from transformer_jax import sharding  # pylint: disable=g-import-not-at-top
  count = default_cpu_devices() if cpu_devices is None else cpu_devices
  if count is not None:
    use_cpu_devices(count)
  return sharding.create_mesh()  # all devices, so made after use_cpu_devices


def search_options(**options: Any) -> decoding.Search:
  """`decoding.Search(**options)`; a value out of range -> UserError naming its flag."""
  try:
    return decoding.Search(**options)
  except ValueError as e:
    raise UserError(f'--{e}') from None
