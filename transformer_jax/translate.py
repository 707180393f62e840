"""Translate text with a trained checkpoint: `transformer-jax-translate --workdir DIR`.

Reads stdin (or `--input`), writes exactly one line per input line, in order (a line with
no content, e.g. blank or only zero-width characters, gives an empty line) to stdout (or
`--output`). Input that is not UTF-8 is an error naming the file and its first bad line
(with the count of such lines); a byte-order mark starting the input is skipped. Sentences are sorted by length and
decoded in batches of fixed shapes (`--batch_size` rows, source length rounded up to a
power of two) so that few programs are compiled; a sentence longer than the model's
`max_len` tokens is cut to it, with a warning on stderr. Uses `<workdir>/averaged` when present.
With `--reference`, sacreBLEU and tokenized BLEU of the output are printed on stderr, with
sacreBLEU's defaults for `--target_lang` (default: the training config's `target_lang`
from `<workdir>/config.json`): the zh / ja-mecab / ko-mecab tokenizers for Chinese,
Japanese, Korean, 13a otherwise.
Each batch is split over all of JAX's devices; on a CPU host JAX is first told to present
the CPU as `--cpu_devices` devices (default: 2 where there are at least 2 cores, unless
the environment sets JAX_NUM_CPU_DEVICES or XLA's host device count), whose
decoding loops run side by side (~20% faster beam search on 2 cores than one device
using both through its thread pool: BENCHMARKS.md).
A missing or incompatible checkpoint or vocabulary ends with a one-line error, exit 2.
No TensorFlow: `transformer_jax.tokenizer.Tokenizer` runs on the `sentencepiece` package.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import logging
import math
import os
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import regex
from jax.sharding import Mesh
from tqdm import tqdm

from transformer_jax import bleu, checkpoint, decode, sharding
from transformer_jax.model import TransformerConfig
from transformer_jax.tokenizer import EOS_ID, Tokenizer

MIN_BUCKET = 16
BOM = '\ufeff'
# Text with nothing to translate: white space, control characters and Unicode's
# default-ignorable code points (zero-width spaces and joiners, BOM, soft hyphen, bidi and
# variation marks, ...), which SentencePiece drops or maps to <unk>.
_NO_CONTENT = regex.compile(r'[\p{White_Space}\p{Cc}\p{Default_Ignorable_Code_Point}]*')

# Source ids [B, S] (int32, 0-padded) -> output ids [B, L].
TranslateFn = Callable[[np.ndarray], np.ndarray]


class TranslateError(Exception):
  """A problem the user can fix (paths, vocabulary); reported as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What a training workdir provides for inference."""
  params: Any
  config: TransformerConfig
  vocab: Tokenizer


def load_vocabulary(path: str, config: TransformerConfig) -> Tokenizer:
  """The SentencePiece model at `path`, checked against the model's ids and vocabulary size."""
  try:
    with open(path, 'rb') as f:
      vocab = Tokenizer(f.read())
  except (OSError, RuntimeError, ValueError) as e:
    raise TranslateError(f'cannot load the vocabulary {path}: {str(e).splitlines()[0]}') from None
  if vocab.vocab_size > min(config.vocab_size, config.output_vocab_size):
    raise TranslateError(f'{path} has {vocab.vocab_size} pieces but the model only '
                         f'{config.vocab_size}')
  return vocab


def load_model(workdir: str, mesh: Optional[Mesh] = None) -> LoadedModel:
  """Params (on the default device, or replicated on `mesh`), config and vocabulary of a
  training workdir (averaged if present)."""
  if not os.path.isdir(workdir):
    raise TranslateError(f'workdir {workdir} does not exist')
  params, config, vocab_path = checkpoint.load_for_inference(workdir)
  params = jax.device_put(params, None if mesh is None else sharding.replicated(mesh))
  return LoadedModel(params, config, load_vocabulary(vocab_path, config))


def check_search_options(beam_size: int, alpha: float) -> None:
  """Raise TranslateError unless beam_size >= 1 and alpha is finite and >= 0 (beam search's
  early stop relies on alpha >= 0)."""
  if beam_size < 1:
    raise TranslateError(f'--beam_size must be >= 1, got {beam_size}')
  if not 0 <= alpha < math.inf:
    raise TranslateError(f'--alpha must be a finite number >= 0, got {alpha}')


def make_translate_fn(model: LoadedModel, *, beam_size: int = 4, alpha: float = 0.6,
                      max_extra_len: int = 50, mesh: Optional[Mesh] = None) -> TranslateFn:
  """A function translating a [B, S] numpy batch with `decode.translate_batch`.

  With `mesh`, the parameters are replicated on it (no copy if `load_model` put them there)
  and each batch is split over its batch axes (sentences are decoded independently),
  completed with empty rows where B does not divide; without, the batch goes where
  `model.params` are.
  """
  params = model.params if mesh is None else jax.device_put(model.params,
                                                            sharding.replicated(mesh))

  def translate_fn(inputs: np.ndarray) -> np.ndarray:
    batch = inputs if mesh is None else sharding.shard_batch({'inputs': inputs}, mesh)['inputs']
    out = decode.translate_batch(params, model.config, batch, beam_size=beam_size,
                                 alpha=alpha, max_extra_len=max_extra_len)
    return np.asarray(out)[:len(inputs)]
  return translate_fn


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
    raise TranslateError(f'--cpu_devices must be >= 1, got {count}')
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    logging.warning('--cpu_devices %d not applied: JAX has already started with %d CPU '
                    'device(s)', count, len(jax.devices('cpu')))


def bucket_length(length: int, max_len: int) -> int:
  """Padded source length: the next power of two >= `length` (at least 16), <= max_len."""
  return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), max_len)


def fit_source(ids: Sequence[int], max_len: int) -> list[int]:
  """Source ids (EOS last) cut to at most `max_len` tokens, keeping the EOS."""
  return list(ids) if len(ids) <= max_len else list(ids[:max_len - 1]) + list(ids[-1:])


def source_ids(line: str, vocab: Any) -> Optional[list[int]]:
  """The ids `vocab` encodes `line` to (EOS last), or None if it has nothing to translate:
  only white space, control or default-ignorable characters, or no token before the EOS.
  A byte-order mark starting the line (a file's signature) is dropped first."""
  line = line.removeprefix(BOM)
  if _NO_CONTENT.fullmatch(line):
    return None
  ids = vocab.encode(line)
  return None if list(ids) == [EOS_ID] else ids


def translate_lines(lines: Sequence[str], translate_fn: TranslateFn, vocab: Any, *,
                    batch_size: int, max_source_len: int, progress: bool = True) -> list[str]:
  """Translate `lines` (one sentence each) -> one output per line, in the input order.

  `vocab` has `encode(str) -> ids` (EOS appended) and `decode(ids) -> str`. Lines with
  no content (`source_ids` None: blank, zero-width characters only, ...) give empty
  outputs without touching the model; longer sources are cut to `max_source_len` tokens
  (EOS kept), with a warning. Batches always have `batch_size` rows.
  """
  outputs = [''] * len(lines)
  encoded, cut = {}, []
  for i, line in enumerate(lines):
    ids = source_ids(line, vocab)
    if ids is not None:
      encoded[i] = fit_source(ids, max_source_len)
      if len(ids) > max_source_len:
        cut.append(i)
  if cut:
    logging.warning('%d of %d lines have more than %d tokens and were cut to that length '
                    '(first: line %d)', len(cut), len(lines), max_source_len, cut[0] + 1)
  order = sorted(encoded, key=lambda i: len(encoded[i]))
  with tqdm(total=len(order), file=sys.stderr, unit='sent', disable=not progress) as bar:
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = bucket_length(max(len(encoded[i]) for i in rows), max_source_len)
      batch = np.zeros((batch_size, width), np.int32)
      for r, i in enumerate(rows):
        batch[r, :len(encoded[i])] = encoded[i]
      for i, ids in zip(rows, translate_fn(batch)):
        outputs[i] = vocab.decode(ids)
      bar.update(len(rows))
  return outputs


def stored_target_lang(workdir: str) -> Optional[str]:
  """`target_lang` of the training config saved in `<workdir>/config.json`, if any."""
  try:
    with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
      return json.load(f).get('target_lang')
  except (OSError, ValueError, AttributeError):
    return None


def _bleu_language(flag: Optional[str], workdir: str) -> str:
  """The target language for BLEU: `flag`, else the workdir's config ('' with a warning
  if it has none); TranslateError if sacreBLEU cannot load its tokenizer."""
  target_lang = flag if flag is not None else stored_target_lang(workdir) or ''
  if flag is None and not target_lang:
    logging.warning('no --target_lang and no target_lang in %s/config.json: BLEU with the '
                    '13a tokenizer', workdir)
  try:
    bleu.sacrebleu_metric(target_lang)
  except ValueError as e:
    raise TranslateError(str(e)) from None
  return target_lang


def _read_lines(path: Optional[str]) -> list[str]:
  """Lines of `path` (or stdin) without their line ends; a final newline adds no line, a
  UTF-8 byte-order mark at the start is skipped. TranslateError if a line is not UTF-8."""
  try:
    if path is None:
      data = sys.stdin.buffer.read()
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except OSError as e:
    raise TranslateError(f'cannot read {path}: {e.strerror}') from None
  data = data.removeprefix(codecs.BOM_UTF8)
  try:
    lines = data.decode('utf-8').split('\n')
  except UnicodeDecodeError:
    raise TranslateError(_not_utf8(path or '<stdin>', data)) from None
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


def _write_lines(path: Optional[str], lines: Sequence[str]) -> None:
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
    raise TranslateError(f'cannot write {path}: {e.strerror}') from None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='transformer-jax-translate', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='training directory with checkpoints')
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
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Run the CLI; returns the exit code (2 with a one-line message for user errors)."""
  args = build_parser().parse_args(argv)
  try:
    check_search_options(args.beam_size, args.alpha)
    if args.batch_size < 1 or args.max_extra_len < 0:
      raise TranslateError('--batch_size must be >= 1, --max_extra_len >= 0')
    cpu_devices = default_cpu_devices() if args.cpu_devices is None else args.cpu_devices
    if cpu_devices is not None:
      use_cpu_devices(cpu_devices)
    mesh = sharding.create_mesh()  # all devices, so made after use_cpu_devices
    model = load_model(args.workdir, mesh)
    lines = _read_lines(args.input)
    references = None if args.reference is None else _read_lines(args.reference)
    if references is not None and len(references) != len(lines):
      raise TranslateError(f'{args.reference} has {len(references)} lines but the input '
                           f'{len(lines)}')
    if references is not None:
      target_lang = _bleu_language(args.target_lang, args.workdir)
    translate_fn = make_translate_fn(model, beam_size=args.beam_size, alpha=args.alpha,
                                     max_extra_len=args.max_extra_len, mesh=mesh)
    outputs = translate_lines(lines, translate_fn, model.vocab, batch_size=args.batch_size,
                              max_source_len=model.config.max_len,
                              progress=not args.no_progress)
    _write_lines(args.output, outputs)
    if references is not None:
      scores = bleu.corpus_bleu(outputs, references, target_lang=target_lang)
      print(bleu.format_scores(scores), file=sys.stderr)
  except (TranslateError, checkpoint.CheckpointError) as e:
    print(f'transformer-jax-translate: error: {e}', file=sys.stderr)
    return 2
  return 0


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
