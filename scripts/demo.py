"""`make demo`: train `configs/demo.py` on the embedded English→Spanish Bible, then translate
the held-out test books (Esther, John) greedily and print their sacreBLEU.

  python scripts/demo.py [--workdir workdir_demo] [--minutes 20]

Training resumes from `<workdir>` if it holds checkpoints; `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'workdir_demo'))
  parser.add_argument('--minutes', type=float, default=None,
                      help='training budget in minutes (default: the config, 20)')
  parser.add_argument('--fresh', action='store_true', help='delete the workdir first')
  parser.add_argument('--examples', type=int, default=5, help='translations to print')
  args = parser.parse_args()

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from absl import logging
  from transformer_jax import checkpoint, input_pipeline, train_cli, train_lib
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  train_cli.quiet_orbax_info()
  config = train_lib.load_config(os.path.join(ROOT, 'configs', 'demo.py'))
  if args.minutes is not None:
    config.train_minutes = args.minutes
  if args.fresh and os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  print(f'Training {config.model.num_encoder_layers}+{config.model.num_decoder_layers}-layer '
        f'd_model {config.model.d_model} Transformer for {config.train_minutes:g} minutes '
        f'in {args.workdir} (TensorBoard: {args.workdir}/tensorboard)', flush=True)
  train_lib.train_and_evaluate(config, args.workdir)

  params, model_cfg, _ = checkpoint.load_for_inference(args.workdir)
  tokenizer = input_pipeline.get_tokenizer(config, args.workdir)
  pairs = input_pipeline.load_raw(config, 'test')
  start = time.perf_counter()
  score, hypotheses = train_lib.translate_and_score(params, model_cfg, tokenizer, pairs,
                                                    config.batch_size, config.max_eval_len)
  for (source, reference), hypothesis in list(zip(pairs, hypotheses))[:args.examples]:
    print(f'\nEN  {source}\nES  {reference}\nMT  {hypothesis}')
  print(f'\nsacreBLEU on the held-out books (Esther, John; {len(pairs)} verses, greedy, '
        f'averaged checkpoint): {score:.1f}  [{time.perf_counter() - start:.0f} s to translate]')
  with open(os.path.join(args.workdir, 'test_bleu.txt'), 'w', encoding='utf-8') as f:
    f.write(f'{score:.2f}\n')


if __name__ == '__main__':
  sys.exit(main())
