"""Train `configs/parse_craft.py` on the embedded CRAFT treebank within a minute budget, then
parse the held-out test articles and print labelled F1 (EVALB, COLLINS.prm; all sentences
and <= 40 words) and the share of outputs that needed a repair, greedy and with the
paper's beam search (beam 21, alpha 0.3, source + 300), beside the right-branching baseline.

  python scripts/parse_demo.py [--workdir workdir_parse] [--minutes 20] [--beam_size 21]
                               [--beam_sentences N]

Training resumes from `<workdir>` if it holds checkpoints (so `--minutes 60` after a
20-minute run continues it to 60 training minutes); `--fresh` starts over. Beam search
is slow on a CPU: `--beam_sentences N` beam-decodes only the first N test sentences (the
greedy and baseline F1 on the same sentences are printed beside it). Results are also
written to `<workdir>/test_f1.json`, the trees to `<workdir>/test_trees_*.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'workdir_parse'))
  parser.add_argument('--minutes', type=float, default=None,
                      help='training budget in minutes (default: the config, 20)')
  parser.add_argument('--fresh', action='store_true', help='delete the workdir first')
  parser.add_argument('--beam_size', type=int, default=21, help='beam for the beam F1')
  parser.add_argument('--beam_sentences', type=int, default=-1,
                      help='beam-decode only the first N test sentences (-1: all)')
  parser.add_argument('--no_train', action='store_true', help='only parse, with the workdir')
  args = parser.parse_args()

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from absl import logging
  from transformer_jax import inference
  from transformer_jax.cli import train
  from transformer_jax.training import train_lib
  from transformer_jax.training import config as config_lib
  from transformer_jax import parsing
  from transformer_jax.parsing import linearize, parser as parser_lib, treebank
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  train.quiet_checkpoint_info()
  config = config_lib.load_config(os.path.join(ROOT, 'configs', 'parse_craft.py'))
  if args.minutes is not None:
    config.train_minutes = args.minutes
  if args.fresh and os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  if not args.no_train:
    print(f'Training {config.model.num_encoder_layers}+{config.model.num_decoder_layers}-layer '
          f'd_model {config.model.d_model} parser for {config.train_minutes:g} minutes in '
          f'{args.workdir} (TensorBoard: {args.workdir}/tensorboard)', flush=True)
    state = train_lib.train_and_evaluate(config, args.workdir)
    print(f'trained to step {int(state.step)}; load average {os.getloadavg()}', flush=True)

  model = inference.load_model(args.workdir)
  golds = treebank.split_trees('test')
  beam = parser_lib.Decoding(args.beam_size, parser_lib.PAPER.alpha,
                             parser_lib.PAPER.max_extra_len)
  subset = golds if args.beam_sentences < 0 else golds[:args.beam_sentences]
  runs = [('greedy', parser_lib.GREEDY, golds)]
  if args.beam_size > 1:
    if len(subset) < len(golds):
      runs.append((f'greedy_first{len(subset)}', parser_lib.GREEDY, subset))
    runs.append((f'beam{args.beam_size}' + ('' if subset is golds else f'_first{len(subset)}'),
                 beam, subset))
  results = {}
  for name, decoding, trees in runs:
    start = time.perf_counter()
    if name.startswith('greedy_first'):  # the greedy trees of the whole set, cut
      evaluation = results['greedy']['evaluation']
      parsed = evaluation.trees[:len(trees)]
      scores = parsing.evalb.evaluate(trees, parsed)
      repaired = None
    else:
      evaluation = parser_lib.parse_and_score(model, trees, decoding,
                                              32 if decoding.beam_size == 1 else 8)
      scores, repaired = evaluation.scores, evaluation.repaired_percent
      parser_lib.write_trees(os.path.join(args.workdir, f'test_trees_{name}.txt'),
                             evaluation.trees)
    baseline, _ = parsing.score_predictions(
        [linearize.right_branching_sequence(len(gold.words())) for gold in trees],
        [' '.join(gold.words()) for gold in trees], trees)
    results[name] = {'evaluation': evaluation, 'sentences': len(trees),
                     'f1': scores['all'].f1, 'f1_len40': scores['len<=40'].f1,
                     'repaired_percent': repaired, 'seconds': time.perf_counter() - start,
                     'baseline_f1': baseline['all'].f1,
                     'baseline_f1_len40': baseline['len<=40'].f1}
    print(f'test ({len(trees)} sentences), {name}: F1 {scores["all"].f1:.2f} (<= 40 words: '
          f'{scores["len<=40"].f1:.2f}); repaired '
          f'{"-" if repaired is None else f"{repaired:.1f}%"}; right-branching baseline F1 '
          f'{baseline["all"].f1:.2f} (<= 40: {baseline["len<=40"].f1:.2f}) '
          f'[{results[name]["seconds"]:.0f} s]\n  {scores["all"]}', flush=True)
  with open(os.path.join(args.workdir, 'test_f1.json'), 'w', encoding='utf-8') as f:
    json.dump({name: {k: v for k, v in r.items() if k != 'evaluation'}
               for name, r in results.items()}, f, indent=1)


if __name__ == '__main__':
  sys.exit(main())
