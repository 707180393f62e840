"""Train `configs/parse_craft.py` on the embedded CRAFT treebank within a minute budget, then
parse the held-out test articles and print labelled F1 (EVALB, COLLINS.prm; all sentences
and <= 40 words) with its signature, greedy and with the paper's beam search (beam 21,
alpha 0.3, source + 300), beside the right-branching baseline, and a few parsed sentences
drawn as trees.

  python scripts/parse_demo.py [--workdir workdir_parse] [--minutes 20] [--beam_size 21]
                               [--beam_sentences N] [--unconstrained | --ablation]
                               [--config.KEY=VALUE ...]

Decoding runs under the tree automaton (every output a tree over the sentence's words);
`--unconstrained` decodes without it (outputs repaired into trees, the share counted),
`--ablation` both ways. Training resumes from `<workdir>` if it holds checkpoints (so
`--minutes 60` after a 20-minute run continues it to 60 training minutes); `--fresh`
starts over; `--config.KEY=VALUE` overrides a config key as `transformer-jax-train` does
(e.g. `--config.linearization=xx`). `--beam_sentences N` beam-decodes only the first N
test sentences (the greedy F1 on the same sentences is printed beside it; `--subset_only`:
no greedy pass over the whole split). Results are
also written to `<workdir>/test_f1.json`, the trees to `<workdir>/test_trees_*.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = 'test'
SHOWN = 2  # parsed sentences drawn as trees


def _arguments() -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'workdir_parse'))
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'parse_craft.py'))
  parser.add_argument('--minutes', type=float, default=None,
                      help='training budget in minutes (default: the config, 20)')
  parser.add_argument('--fresh', action='store_true', help='delete the workdir first')
  parser.add_argument('--beam_size', type=int, default=21, help='beam for the beam F1')
  parser.add_argument('--beam_sentences', type=int, default=-1,
                      help='beam-decode only the first N test sentences (-1: all)')
  parser.add_argument('--subset_only', action='store_true',
                      help='with --beam_sentences N: greedy on those N only, not the whole split')
  parser.add_argument('--no_train', action='store_true', help='only parse, with the workdir')
  parser.add_argument('--unconstrained', action='store_true',
                      help='decode without the tree automaton')
  parser.add_argument('--ablation', action='store_true',
                      help='decode with and without the tree automaton')
  return parser.parse_known_args()


def _train(args: argparse.Namespace, overrides: list[str]) -> None:
  from transformer_jax.cli import train
  from transformer_jax.training import train_lib
  config, _ = train.parse(['--config', args.config, '--workdir', args.workdir, *overrides])
  if args.minutes is not None:
    config.train_minutes = args.minutes
  print(f'Training {config.model.num_encoder_layers}+{config.model.num_decoder_layers}-layer '
        f'd_model {config.model.d_model} parser ({config.linearization!r} linearisation) for '
        f'{config.train_minutes:g} minutes in {args.workdir} (TensorBoard: '
        f'{args.workdir}/tensorboard)', flush=True)
  state = train_lib.train_and_evaluate(config, args.workdir)
  print(f'trained to step {int(state.step)}; load average {os.getloadavg()}', flush=True)


def _runs(args: argparse.Namespace, golds: list) -> list[tuple[str, object, list, bool]]:
  """(name, search, gold trees, constrained) of each decoding to run."""
  from transformer_jax import decoding
  from transformer_jax.parsing import parser as parser_lib
  subset = golds if args.beam_sentences < 0 else golds[:args.beam_sentences]
  beam = decoding.Search(beam_size=args.beam_size, alpha=parser_lib.PAPER.alpha,
                         max_extra_len=parser_lib.PAPER.max_extra_len)
  part = '' if subset is golds else f'_first{len(subset)}'
  searches = ([] if args.subset_only and part else [('greedy', parser_lib.GREEDY, golds)])
  if args.beam_size > 1:
    if part:
      searches.append((f'greedy{part}', parser_lib.GREEDY, subset))
    searches.append((f'beam{args.beam_size}{part}', beam, subset))
  modes = [True, False] if args.ablation else [not args.unconstrained]
  return [(name + ('' if constrained else '_unconstrained'), search, trees, constrained)
          for constrained in modes for name, search, trees in searches]


def _signature(name: str, sentences: int, search) -> str:
  """What an F1 figure is: scorer and its parameters, split, sentences, decoding."""
  from transformer_jax.parsing import evalb
  return (f'EVALB COLLINS.prm (labelled brackets, punctuation deleted, ADVP=PRT, cut-off '
          f'{evalb.CUTOFF_LENGTH}) | split {SPLIT} | {sentences} sentences | {name}: beam '
          f'{search.beam_size}, alpha {search.alpha}, source + {search.max_extra_len}')


def _draw(trees: list, count: int) -> None:
  """Print the first `count` trees of at most 12 words, drawn (nltk)."""
  from nltk import Tree as Drawn
  for tree in [tree for tree in trees if tree is not None and len(tree.words()) <= 12][:count]:
    Drawn.fromstring(str(tree)).pretty_print()


def main() -> None:
  args, overrides = _arguments()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from absl import logging
  from transformer_jax.cli import train
  from transformer_jax import parsing
  from transformer_jax.parsing import evalb, linearize, parser as parser_lib, treebank
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  train.quiet_checkpoint_info()
  if args.fresh and os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  if not args.no_train:
    _train(args, overrides)

  parser = parser_lib.load(args.workdir)
  golds = treebank.split_trees(SPLIT)
  results = {}
  for name, search, trees, constrained in _runs(args, golds):
    start = time.perf_counter()
    whole = results.get(name.replace(f'_first{len(trees)}', '', 1))
    if name.startswith('greedy_first') and whole:  # the greedy trees of the whole set, cut
      whole = whole['evaluation']
      evaluation = whole._replace(scores=evalb.evaluate(trees, whole.trees[:len(trees)]),
                                  trees=whole.trees[:len(trees)], repaired_percent=None)
    else:
      evaluation = parser_lib.parse_and_score(parser, trees, search,
                                              32 if search.beam_size == 1 else 8,
                                              constrained=constrained)
      parser_lib.write_trees(os.path.join(args.workdir, f'test_trees_{name}.txt'),
                             evaluation.trees)
    scores, repaired = evaluation.scores, evaluation.repaired_percent
    baseline, _ = parsing.score_predictions(
        [linearize.right_branching_sequence(len(gold.words())) for gold in trees],
        [' '.join(gold.words()) for gold in trees], trees)
    results[name] = {'evaluation': evaluation, 'sentences': len(trees),
                     'constrained': constrained, 'f1': scores['all'].f1,
                     'f1_len40': scores['len<=40'].f1, 'repaired_percent': repaired,
                     'tag_accuracy': evaluation.tag_accuracy,
                     'seconds': time.perf_counter() - start, 'baseline_f1': baseline['all'].f1,
                     'baseline_f1_len40': baseline['len<=40'].f1,
                     'signature': _signature(name, len(trees), search)}
    tags = ('' if evaluation.tag_accuracy is None
            else f'; tagging accuracy {evaluation.tag_accuracy:.2f}%')
    print(f'{name}: F1 {scores["all"].f1:.2f} (<= 40 words: {scores["len<=40"].f1:.2f}); '
          f'repaired {"-" if repaired is None else f"{repaired:.1f}%"}{tags}; right-branching '
          f'F1 {baseline["all"].f1:.2f} (<= 40: {baseline["len<=40"].f1:.2f}) '
          f'[{results[name]["seconds"]:.0f} s]\n  {results[name]["signature"]}\n'
          f'  {scores["all"]}', flush=True)
  _draw(next(iter(results.values()))['evaluation'].trees, SHOWN)
  with open(os.path.join(args.workdir, 'test_f1.json'), 'w', encoding='utf-8') as f:
    json.dump({name: {k: v for k, v in r.items() if k != 'evaluation'}
               for name, r in results.items()}, f, indent=1)


if __name__ == '__main__':
  sys.exit(main())
