"""`make demo`: train `configs/demo.py` on the embedded English→Spanish Bible, then translate
the held-out test books (Esther, John) with the averaged checkpoint and print their
sacreBLEU, greedy and with beam search (beam 4, α 0.6, as in the paper).

  python scripts/demo.py [--workdir workdir_demo] [--minutes 20] [--beam_size 4]

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
  parser.add_argument('--beam_size', type=int, default=4, help='beam for the final BLEU')
  args = parser.parse_args()

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from absl import logging
  from transformer_jax import bleu, inference
  from transformer_jax.cli import train
  from transformer_jax.training import input_pipeline, sources, tasks, train_lib
  from transformer_jax.training import config as config_lib
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  train.quiet_checkpoint_info()
  config = config_lib.load_config(os.path.join(ROOT, 'configs', 'demo.py'))
  if args.minutes is not None:
    config.train_minutes = args.minutes
  if args.fresh and os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  print(f'Training {config.model.num_encoder_layers}+{config.model.num_decoder_layers}-layer '
        f'd_model {config.model.d_model} Transformer for {config.train_minutes:g} minutes '
        f'in {args.workdir} (TensorBoard: {args.workdir}/tensorboard)', flush=True)
  train_lib.train_and_evaluate(config, args.workdir)

  params, model_cfg, _ = inference.load_for_inference(args.workdir)
  tokenizer = input_pipeline.get_tokenizer(config, args.workdir)
  pairs = sources.load_raw(config, 'test')
  scores = {}
  for beam_size in sorted({1, args.beam_size}):
    start = time.perf_counter()
    scores[beam_size], hypotheses = tasks.translate_and_score(
        params, model_cfg, tokenizer, pairs, config.decode_batch_size, config.max_eval_len,
        beam_size=beam_size, target_lang=config.target_lang)
    how = 'greedy' if beam_size == 1 else f'beam {beam_size}, alpha 0.6'
    path = os.path.join(args.workdir, f'test_translations_beam{beam_size}.txt')
    bleu.write_hypotheses(path, hypotheses)
    print(f'sacreBLEU on the held-out books (Esther, John; {len(pairs)} verses, averaged '
          f'checkpoint, {how}): {scores[beam_size].sacrebleu:.1f}  '
          f'[{time.perf_counter() - start:.0f} s to translate]\n'
          f'  {bleu.format_scores(scores[beam_size])}\n  translations: {path}', flush=True)
  for (source, reference), hypothesis in list(zip(pairs, hypotheses))[:args.examples]:
    print(f'\nEN  {source}\nES  {reference}\nMT  {hypothesis}')
  with open(os.path.join(args.workdir, 'test_bleu.txt'), 'w', encoding='utf-8') as f:
    f.write(''.join(f'beam_size={k} {bleu.format_scores(v)}\n' for k, v in scores.items()))


if __name__ == '__main__':
  sys.exit(main())
