"""The plain install (`pip install .`, no extras) has every package its modules import."""

import ast
import configparser
import importlib.metadata
import os
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'transformer_jax')
# What `pip install .` gives (README, "Installing elsewhere"): the model, decoding,
# checkpoint loading and averaging, inference and the translate, score and parse CLIs,
# BLEU, parsing. The others need the [train] extra: config (ml_collections), tasks (absl),
# and the training loop with its data, clock, loss and logging.
PLAIN = {'__init__', 'linear', 'attention', 'model', 'model_config', 'decode', 'sharding',
         'distributed', 'tokenizer', 'bleu', 'checksums', 'checkpoint', 'workdir', 'inference',
         'hypotheses', 'cli', 'translate', 'score', 'parse', 'average', 'parsing',
         'parsing.evalb', 'parsing.linearize', 'parsing.treebank', 'parsing.parser', 'scoring',
         'marian', 'marian_cli'}
TRAIN = {'config', 'tasks', 'clock', 'loss', 'sources', 'synthetic', 'input_pipeline',
         'metrics', 'train_lib', 'train', 'visualize'}
# Imports inside functions of plain modules that only training calls (TensorFlow for the
# tokenizer's training and in-graph tokenisation), or that only an optional format needs
# (torch for a Marian checkpoint saved as pytorch_model.bin: a one-line error without it).
TRAINING_ONLY_FUNCTIONS = {('tokenizer', 'tensorflow'), ('tokenizer', 'tensorflow_text'),
                           ('marian', 'torch')}


def _setup_cfg() -> configparser.ConfigParser:
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  return config


def _modules() -> dict[str, str]:
  """Module name ('translate', 'parsing.evalb'; '__init__' for the package) -> its file."""
  found = {}
  for folder, _, names in os.walk(PACKAGE):
    prefix = os.path.relpath(folder, PACKAGE).replace(os.sep, '.').removeprefix('.')
    for name in names:
      if name.endswith('.py'):
        module = '.'.join(filter(None, [prefix, name[:-3].replace('__init__', '')]))
        found[module or '__init__'] = os.path.join(folder, name)
  return found


def _imports(path: str, modules: set[str]) -> list[tuple[str, bool]]:
  """(name imported, inside a function?) for each import of the file at `path`; a module
  of this package as 'transformer_jax.<module>' ('from transformer_jax.x import y' counts
  as transformer_jax.x.y when that is a module)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  found = []

  def visit(node, nested):
    for child in ast.iter_child_nodes(node):
      inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.Import):
        found.extend((alias.name, inner) for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        for alias in child.names:
          name = f'{child.module}.{alias.name}'
          inside = name.removeprefix('transformer_jax.')
          found.append((name if inside in modules else child.module, inner))
      visit(child, inner)
  visit(tree, False)
  return found


def _plain_imports() -> dict[str, set[str]]:
  """Third-party top-level module -> the plain modules importing it, following the
  transformer_jax modules the plain ones import (all must be plain themselves)."""
  modules = _modules()
  third_party, todo, seen = {}, sorted(PLAIN), set()
  while todo:
    module = todo.pop()
    if module in seen:
      continue
    seen.add(module)
    for name, nested in _imports(modules[module], set(modules)):
      top = name.split('.')[0]
      if top == 'transformer_jax':
        inner = name.partition('.')[2] or '__init__'
        assert inner in PLAIN, f'plain module {module} imports training-only {inner}'
        todo.append(inner)
      elif top not in sys.stdlib_module_names and not (
          nested and (module, top) in TRAINING_ONLY_FUNCTIONS):
        third_party.setdefault(top, set()).add(module)
  return third_party


def test_every_module_is_plain_or_training_only():
  assert PLAIN | TRAIN == set(_modules()) and not PLAIN & TRAIN


def test_plain_install_requires_every_third_party_import():
  required = {canonicalize_name(Requirement(line).name)
              for line in _setup_cfg()['options']['install_requires'].split('\n') if line}
  distributions = importlib.metadata.packages_distributions()
  missing = {}
  for top, importers in _plain_imports().items():
    names = {canonicalize_name(d) for d in distributions.get(top, [top])}
    if not names & required:
      missing[top] = sorted(importers)
  assert not missing, f'imported by the plain install but not in install_requires: {missing}'


def test_console_scripts_of_the_plain_install_use_plain_modules():
  scripts = _setup_cfg()['options.entry_points']['console_scripts'].strip().split('\n')
  targets = dict(line.replace(' ', '').split('=') for line in scripts)
  modules = {name: target.split(':')[0].split('.')[1] for name, target in targets.items()}
  assert modules['transformer-jax-translate'] in PLAIN
  assert modules['transformer-jax-score'] in PLAIN
  assert modules['transformer-jax-parse'] in PLAIN
  assert modules['transformer-jax-average'] in PLAIN
  assert modules['transformer-jax-train'] in TRAIN
