"""Parse English sentences with a trained parser: `transformer-jax-parse --workdir DIR`.

Reads stdin (or `--input`): one sentence a line, raw text (`The cells weren't grown.`),
tokenised as the treebank is (`parsing.tokenize`: `The cells were n't grown .`); with
`--pretokenized`, words separated by whitespace as they are. `(` and `)` become the
treebank's -LRB- / -RRB-. Writes to stdout (or `--output`) exactly one line per input
line, in order: the sentence's tree in Penn bracketing under `TOP` over its words, e.g.
`(TOP (S (NP (XX The) (XX cells)) (VP (XX divide)) (XX .)))`, with predicted POS tags
in place of `XX` for a parser trained on the 'tags' linearisation; a blank line gives an
empty line. Decoding runs under the tree automaton (`parsing.constraints`), so every
output is a tree over the words; `--unconstrained` decodes without it (for ablation) and
repairs outputs that are not (`parsing.linearize.from_sequence`), counted on stderr.

Decoding: the paper's (§6.3) by default, beam 21, alpha 0.3, at most source + 300
tokens; `--greedy` is much cheaper. Devices and batching as `transformer-jax-translate`;
a bad flag or a missing or incompatible checkpoint ends with one line on stderr, exit 2.
The work is done by `transformer_jax.parsing.parser`; no TensorFlow.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from transformer_jax import cli
from transformer_jax.parsing import parser as parser_lib
from transformer_jax.parsing import tokenize

PROG = 'transformer-jax-parse'


def build_parser() -> cli.ArgumentParser:
  paper = parser_lib.PAPER
  parser = cli.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='training directory of a parser')
  parser.add_argument('--input', help='file with one sentence per line (default: stdin)')
  parser.add_argument('--pretokenized', action='store_true',
                      help='the input is tokenised already: words separated by whitespace')
  parser.add_argument('--output', help='file for the trees (default: stdout)')
  parser.add_argument('--beam_size', type=int, default=paper.beam_size)
  parser.add_argument('--alpha', type=float, default=paper.alpha, help='length penalty exponent')
  parser.add_argument('--max_extra_len', type=int, default=paper.max_extra_len,
                      help='output length limit = source length (tokens) + this')
  parser.add_argument('--greedy', action='store_true', help='greedy decoding (beam size 1)')
  parser.add_argument('--unconstrained', action='store_true',
                      help='decode without the tree automaton (outputs repaired into trees)')
  parser.add_argument('--batch_size', type=int, default=16, help='sentences per batch')
  parser.add_argument('--cpu_devices', type=int, help='as for transformer-jax-translate')
  parser.add_argument('--no_progress', action='store_true', help='no progress bar on stderr')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
  return cli.run_main(PROG, lambda: _parse(build_parser().parse_args(argv)))


def _parse(args) -> None:
  search = cli.search_options(beam_size=1 if args.greedy else args.beam_size,
                              alpha=args.alpha, max_extra_len=args.max_extra_len)
  if args.batch_size < 1:
    raise cli.UserError(f'--batch_size must be >= 1, got {args.batch_size}')
  mesh = cli.decoding_mesh(args.cpu_devices)
  parser = parser_lib.load(args.workdir, mesh)
  words = parser_lib.sentence_words if args.pretokenized else tokenize.words
  sentences = [words(line) for line in cli.read_lines(args.input)]
  parsed = parser_lib.parse(parser, sentences, search, args.batch_size, mesh,
                            progress=not args.no_progress, constrained=not args.unconstrained)
  cli.write_lines(args.output, ['' if tree is None else str(tree) for tree in parsed.trees])
  print(f'{PROG}: {sum(map(bool, sentences))} sentences parsed, {parsed.repaired} of the '
        'outputs repaired', file=sys.stderr)


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
