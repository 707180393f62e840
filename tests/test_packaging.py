"""The package's tiers, derived from the tree: what `pip install .` gives needs only
install_requires; `transformer_jax/training/` and what imports it need the [train] extra.

Every module's third-party imports are followed through the package's own imports
(module level and inside functions alike). A module is *plain* when all of them are in
install_requires, *train* when the rest are in the [train] extra; the library (every
module outside `training/` and `cli/`) must be plain. A function-local import of a
package outside install_requires is allowed only inside `try: ... except ImportError`
(an optional format, e.g. torch for a Marian `pytorch_model.bin`).
"""

import ast
import configparser
import functools
import importlib.metadata
import os
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'transformer_jax')
# What the README promises a plain install runs: every console script but these two.
TRAIN_SCRIPTS = {'transformer-jax-train', 'transformer-jax-visualize'}


def _setup_cfg() -> configparser.ConfigParser:
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  return config


def _requirements(text: str) -> set[str]:
  """Distribution names of a requirements block ('transformer_jax[...]' lines skipped)."""
  names = set()
  for line in filter(None, (line.strip() for line in text.split('\n'))):
    name = canonicalize_name(Requirement(line).name)
    if name != 'transformer-jax':
      names.add(name)
  return names


def _modules() -> dict[str, str]:
  """Dotted module name ('cli.translate', 'parsing'; '' for the package) -> its file."""
  found = {}
  for folder, _, names in os.walk(PACKAGE):
    prefix = os.path.relpath(folder, PACKAGE).replace(os.sep, '.').removeprefix('.')
    for name in names:
      if name.endswith('.py'):
        found['.'.join(filter(None, [prefix, name[:-3].replace('__init__', '')]))] = (
            os.path.join(folder, name))
  return found


def _imports(path: str, modules: set[str]) -> list[tuple[str, bool, bool]]:
  """(name, inside a function?, guarded by `except ImportError`?) for each import of the
  file at `path`; a module of this package as 'transformer_jax.<module>'."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  found = []

  def guarded(node: ast.Try) -> bool:
    return any(isinstance(h.type, ast.Name) and h.type.id in ('ImportError',
                                                              'ModuleNotFoundError')
               for h in node.handlers)

  def visit(node, nested, guard):
    for child in ast.iter_child_nodes(node):
      inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      inner_guard = guard or (isinstance(child, ast.Try) and guarded(child))
      if isinstance(child, ast.Import):
        found.extend((alias.name, inner, inner_guard) for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        for alias in child.names:
          name = f'{child.module}.{alias.name}'
          inside = name.removeprefix('transformer_jax.')
          found.append((name if inside in modules else child.module, inner, inner_guard))
      visit(child, inner, inner_guard)
  visit(tree, False, False)
  return found


@functools.cache
def _distributions(top: str) -> frozenset[str]:
  """The distributions providing the top-level module `top` (any one of them will do)."""
  return frozenset(canonicalize_name(d)
                   for d in _packages_distributions().get(top, [top]))


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
  return importlib.metadata.packages_distributions()


@functools.cache
def _needs() -> dict[str, dict[frozenset[str], set[str]]]:
  """Module -> {the distributions that provide a third-party module it needs (its own
  imports and those of the package modules it imports): the modules importing it}.
  Optional imports (guarded) are left out."""
  modules = _modules()
  direct, internal = {}, {}
  for module, path in modules.items():
    direct[module], internal[module] = {}, set()
    for name, nested, guard in _imports(path, set(modules)):
      top = name.split('.')[0]
      if top == 'transformer_jax':
        inner = name.partition('.')[2]
        internal[module].add(inner)
        # a package's __init__ runs when a submodule is imported
        parts = inner.split('.')
        internal[module].update('.'.join(parts[:i]) for i in range(len(parts)))
      elif top not in sys.stdlib_module_names and not (nested and guard):
        direct[module].setdefault(_distributions(top), set()).add(module)
  needs = {}
  for module in modules:
    todo, seen, total = [module], set(), {}
    while todo:
      current = todo.pop()
      if current in seen:
        continue
      seen.add(current)
      for dist, importers in direct[current].items():
        total.setdefault(dist, set()).update(importers)
      todo.extend(internal[current] & set(modules))
    needs[module] = total
  return needs


def _tiers() -> dict[str, str]:
  """Module -> 'plain' or 'train' (AssertionError naming what no extra provides)."""
  setup = _setup_cfg()
  plain = _requirements(setup['options']['install_requires'])
  train = plain | _requirements(setup['options.extras_require']['train'])
  tiers = {}
  for module, needs in _needs().items():
    if all(dists & plain for dists in needs):
      tiers[module] = 'plain'
    else:
      missing = {'|'.join(sorted(d)): sorted(m) for d, m in needs.items() if not d & train}
      assert not missing, f'{module} needs distributions of no extra: {missing}'
      tiers[module] = 'train'
  return tiers


def test_the_library_needs_only_install_requires():
  tiers = _tiers()
  library = {m for m in tiers if m.split('.')[0] not in ('training', 'cli')}
  heavy = {m: sorted('|'.join(sorted(d)) for d in _needs()[m]) for m in library
           if tiers[m] != 'plain'}
  assert not heavy, f'library modules that need more than install_requires: {heavy}'
  assert {'', 'model', 'decoding.searches', 'inference', 'parsing.parser',
          'interop.marian'} <= library


def test_training_is_its_own_tier_and_the_library_never_imports_it():
  modules = _modules()
  for module, path in modules.items():
    if module.split('.')[0] in ('training', 'cli'):
      continue
    imported = {name for name, _, _ in _imports(path, set(modules))}
    assert not {n for n in imported if n.startswith(('transformer_jax.training',
                                                      'transformer_jax.cli'))}, module
  assert _tiers()['training.input_pipeline'] == 'train'


def test_console_scripts_of_the_plain_install_use_plain_modules():
  scripts = _setup_cfg()['options.entry_points']['console_scripts'].strip().split('\n')
  targets = dict(line.replace(' ', '').split('=') for line in scripts)
  tiers = _tiers()
  found = {name: tiers[target.split(':')[0].removeprefix('transformer_jax.')]
           for name, target in targets.items()}
  assert {name for name, tier in found.items() if tier == 'train'} == TRAIN_SCRIPTS, found
  assert all(target.startswith('transformer_jax.cli.') for target in targets.values())


def test_every_command_line_runs_as_a_module():
  """`python -m transformer_jax.cli.<name> --help` for every console script (import and
  export: `python -m transformer_jax.cli.marian import|export`)."""
  scripts = _setup_cfg()['options.entry_points']['console_scripts'].strip().split('\n')
  calls = []
  for line in scripts:
    name, target = (part.strip() for part in line.split('='))
    module = target.split(':')[0]
    calls.append((module, [name.rpartition('-')[2]] if module.endswith('.marian') else []))
  code = ('import runpy, sys\n'
          f'for module, sub in {calls!r}:\n'
          '  sys.argv = [module] + sub + ["--help"]\n'
          '  try:\n'
          '    runpy.run_module(module, run_name="__main__")\n'
          '  except SystemExit as e:\n'
          '    assert e.code in (0, None), (module, e.code)\n'
          '  else:\n'
          '    raise AssertionError(f"{module} did not run")\n'
          'print("ok")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]
  assert out.stdout.count('usage:') == len(calls)
