"""Translate text with a trained checkpoint: `transformer-jax-translate --workdir DIR`.

Reads stdin (or `--input`), writes exactly one line per input line, in order (a line with
no content, e.g. blank or only zero-width characters, gives an empty line) to stdout (or
`--output`). Input that is not UTF-8 is an error naming the file and its first bad line
(with the count of such lines); a byte-order mark starting the input is skipped. Sentences
are sorted by length and decoded in batches of fixed shapes (`--batch_size` rows, source
length rounded up to a power of two) so that few programs are compiled; a sentence longer
than the model's `max_len` tokens is cut to it, with a warning on stderr. Uses
`<workdir>/averaged` when present.
With `--reference`, sacreBLEU and tokenized BLEU of the output are printed on stderr, with
sacreBLEU's defaults for `--target_lang` (default: the training config's `target_lang`
from `<workdir>/config.json`): the zh / ja-mecab / ko-mecab tokenizers for Chinese,
Japanese, Korean, 13a otherwise.
Several `--workdir`s decode as an ensemble (same vocabulary). `--n_best K` writes the beam's
K best per input as `index ||| hypothesis ||| score ||| log_prob`, `--scores` and
`--alignment` add fields to 1-best lines, `--sample` samples (`hypotheses.format_lines`);
a printed score is that of the printed text, what `transformer-jax-score` gives for it.
A workdir trained for another task (its config.json's "task", e.g. a parser) is refused.
Each batch is split over all of JAX's devices; on a CPU host JAX is first told to present
the CPU as `--cpu_devices` devices (default: 2 where there are at least 2 cores, unless
the environment sets JAX_NUM_CPU_DEVICES or XLA's host device count), whose
decoding loops run side by side (~20% faster beam search on 2 cores than one device
using both through its thread pool: BENCHMARKS.md).
A bad flag or a missing or incompatible checkpoint or vocabulary ends with one line on
stderr, exit 2 (`cli`). The work is done by `transformer_jax.inference`; no TensorFlow.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from transformer_jax import bleu, cli, hypotheses, inference
from transformer_jax.workdir import Workdir

PROG = 'transformer-jax-translate'


def bleu_language(flag: Optional[str], workdir: str) -> str:
  """The target language for BLEU: `flag`, else the workdir's config.json ('' with a
  warning if it has none); UserError if sacreBLEU cannot load its tokenizer."""
  target_lang = flag if flag is not None else Workdir(workdir).saved_config().get(
      'target_lang') or ''
  if flag is None and not target_lang:
    logging.warning('no --target_lang and no target_lang in %s/config.json: BLEU with the '
                    '13a tokenizer', workdir)
  try:
    bleu.sacrebleu_metric(target_lang)
  except ValueError as e:
    raise cli.UserError(str(e)) from None
  return target_lang


def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
  cli.add_workdir_argument(parser)
  parser.add_argument('--input', help='file with one sentence per line (default: stdin)')
  parser.add_argument('--output', help='file for the translations (default: stdout)')
  parser.add_argument('--beam_size', type=int, default=4, help='1 means greedy decoding')
  parser.add_argument('--alpha', type=float, default=0.6, help='length penalty exponent')
  parser.add_argument('--max_extra_len', type=int, default=50,
                      help='output length limit = source length + this')
  parser.add_argument('--reference', help='reference translations, one per input line: '
                      'print sacreBLEU and tokenized BLEU of the output on stderr')
  parser.add_argument('--target_lang',
                      help="language of the output for --reference's BLEU tokenizer (zh, ja, "
                      "ko: sacreBLEU's language defaults; others: 13a); default: the "
                      "workdir's config.json target_lang")
  parser.add_argument('--batch_size', type=int, default=32, help='sentences per batch')
  parser.add_argument('--cpu_devices', type=int,
                      help='on a CPU host, split each batch over this many JAX devices '
                      '(default: 2, or 1 on a 1-core host, unless JAX_NUM_CPU_DEVICES or '
                      'XLA_FLAGS sets a count)')
  parser.add_argument('--no_progress', action='store_true', help='no progress bar on stderr')
  output = parser.add_argument_group('output (README: "Decoding features")')
  output.add_argument('--n_best', type=int, help='write the K <= --beam_size best per input: '
                      '"index ||| hypothesis ||| score ||| log_prob" lines, best first')
  output.add_argument('--scores', action='store_true', help='1-best lines: '
                      '"hypothesis ||| score ||| log_prob" (score: log_prob length-penalised)')
  output.add_argument('--alignment', action='store_true',
                      help='add " ||| i-j ..." Pharaoh word alignments (source word i, output '
                      'word j) from the cross-attention')
  sampling = parser.add_argument_group('sampling (instead of beam search)')
  sampling.add_argument('--sample', action='store_true', help='sample each translation '
                        '(back-translation); reproducible for a given --seed, input, '
                        '--batch_size and device count')
  sampling.add_argument('--temperature', type=float, help='> 0 (default 1)')
  sampling.add_argument('--top_k', type=int, help='sample among the k most likely (default 0: '
                        'all)')
  sampling.add_argument('--top_p', type=float, help='sample in the nucleus of this mass, in '
                        '(0, 1] (default 1: all)')
  sampling.add_argument('--seed', type=int, help='PRNG seed (default 0)')
  return parser


def search_options(args) -> hypotheses.SearchOptions:
  """The decoding flags checked -> SearchOptions; UserError for a bad value or mix."""
  if args.batch_size < 1:
    raise cli.UserError(f'--batch_size must be >= 1, got {args.batch_size}')
  sampling = {'temperature': args.temperature, 'top_k': args.top_k, 'top_p': args.top_p}
  given = {key: value for key, value in sampling.items() if value is not None}
  if (given or args.seed is not None) and not args.sample:
    raise cli.UserError(f'--{next(iter(given), "seed")} needs --sample')
  if args.sample and args.n_best not in (None, 1):
    raise cli.UserError(f'--n_best must be 1 with --sample, got {args.n_best}')
  if not given.get('temperature', 1) > 0:
    raise cli.UserError(f'--temperature must be > 0, got {args.temperature}')
  search = cli.search_options(beam_size=args.beam_size, alpha=args.alpha,
                              max_extra_len=args.max_extra_len, n_best=args.n_best or 1,
                              sample=args.sample, **given)
  return hypotheses.SearchOptions(search, seed=args.seed or 0, alignment=args.alignment)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
  return cli.run_main(PROG, lambda: _translate(build_parser().parse_args(argv)))


def _translate(args) -> None:
  options = search_options(args)
  mesh = cli.decoding_mesh(args.cpu_devices)
  model = inference.load_ensemble(args.workdir, mesh, task='translation')
  lines = cli.read_lines(args.input)
  references = None if args.reference is None else cli.read_lines(args.reference)
  if references is not None and len(references) != len(lines):
    raise cli.UserError(f'{args.reference} has {len(references)} lines but the input '
                        f'{len(lines)}')
  if references is not None:
    target_lang = bleu_language(args.target_lang, args.workdir[0])
  results = hypotheses.search_lines(lines, model, options, batch_size=args.batch_size,
                                    mesh=mesh, progress=not args.no_progress)
  cli.write_lines(args.output, hypotheses.format_lines(
      results, n_best=args.n_best is not None, scores=args.scores, alignment=args.alignment))
  if references is not None:
    outputs = [h[0].text if h else '' for h in results]
    scores = bleu.corpus_bleu(outputs, references, target_lang=target_lang)
    print(bleu.format_scores(scores), file=sys.stderr)


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
