"""Beam-search decoding throughput: transformer_jax vs HuggingFace Marian vs CTranslate2.

The paper's base dimensions (d_model 512, d_ff 2048, 8 heads, 6+6 layers, post-LN, ReLU,
sinusoidal positions, shared embeddings) with random weights, a shared vocabulary of
`--vocab` (default 32000) pieces; a batch of 8 sentences x 32 source tokens; beam 4;
exactly 64 output tokens per sentence (EOS banned until then) so that every system does
the same work (`--batch` changes the 8). The peers decode the same random source ids with
the same dimensions: `MarianMTModel.generate` (PyTorch, float32) and CTranslate2 (that
Marian model converted with `TransformersConverter`, float32 and int8). A missing peer
package is skipped with a message. Each system runs once to warm up (compilation), then
`--repeats` timed runs; the table reports the fastest run (wall clock) and its CPU time
(all threads). By default every system uses all cores; `--single_thread` pins each to one
thread (XLA, torch and CTranslate2 alike), which compares work rather than parallel
scaling on a busy machine. On a GPU host JAX uses the GPU and `--torch_device cuda` puts
the HuggingFace model there too (CTranslate2 stays on the CPU).

  python benchmarks/bench_decode.py [--vocab 32000] [--repeats 3] [--single_thread]
      [--systems jax,jax-bf16,hf,ct2] [--jax_cpu_devices 2] [--batch 8] [--torch_device cpu]

Benchmark-only packages (torch, transformers, ctranslate2) are imported here only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np

SOURCE_LEN, OUTPUT_LEN, BEAM = 32, 64, 4
PAD, EOS = 0, 1


@dataclasses.dataclass
class Result:
  name: str
  seconds: list[float]  # wall clock per timed run
  cpu_seconds: list[float]  # process CPU time (all threads) per timed run
  output_tokens: int  # per run, counted from the outputs

  @property
  def best(self) -> float:
    return min(self.seconds)

  @property
  def best_cpu(self) -> float:
    return self.cpu_seconds[self.seconds.index(self.best)]

  @property
  def tokens_per_second(self) -> float:
    return self.output_tokens / self.best


def time_runs(name: str, run: Callable[[], int], repeats: int) -> Result:
  """One warm-up call, then `repeats` timed calls; `run` returns the output-token count."""
  tokens = run()
  seconds, cpu_seconds = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    tokens = run()
    seconds.append(time.perf_counter() - start)
    cpu_seconds.append(time.process_time() - start_cpu)
  print(f'{name}: ' + ' '.join(f'{s:.2f}s' for s in seconds), flush=True)
  return Result(name, seconds, cpu_seconds, tokens)


def bench_jax(source: np.ndarray, vocab: int, dtype_name: str, repeats: int) -> Result:
  """transformer_jax.decode.beam_search, jit-compiled, 64 forced output tokens."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from transformer_jax import Transformer, TransformerConfig, decode
  dtype = jnp.dtype(dtype_name)
  config = TransformerConfig.base(vocab, dropout_rate=0.0, max_len=256, dtype=dtype)
  ones = jnp.ones((1, 8), jnp.int32)
  # Weights stored in the compute dtype (cast once, not at every step).
  params = jax.jit(lambda key: jax.tree.map(lambda x: x.astype(dtype), nn.meta.unbox(
      Transformer(config).init(key, ones, ones)['params'])))(jax.random.key(0))
  inputs = jnp.asarray(source, jnp.int32)
  if len(jax.devices()) > 1:  # --jax_cpu_devices: the batch split over a 'data' mesh axis
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.array(jax.devices()), ('data',))
    inputs = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec('data')))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

  def run() -> int:
    tokens, _ = decode.beam_search(params, config, inputs, beam_size=BEAM,
                                   max_extra_len=OUTPUT_LEN - SOURCE_LEN,
                                   max_decode_len=OUTPUT_LEN, min_len=OUTPUT_LEN)
    return int(np.sum(np.asarray(tokens) != PAD))

  where = f'{len(jax.devices())} x {jax.devices()[0].platform}'
  return time_runs(f'transformer_jax {dtype_name} ({where})', run, repeats)


def build_marian(vocab: int) -> Any:
  """A randomly initialised MarianMTModel with the base dimensions, in eval mode.

  As in Marian, the padding id (also the decoder start, with a zero embedding) is the last
  one; CTranslate2's converter drops that row.
  """
  import transformers
  config = transformers.MarianConfig(
      vocab_size=vocab, decoder_vocab_size=vocab, d_model=512, encoder_layers=6,
      decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
      encoder_ffn_dim=2048, decoder_ffn_dim=2048, activation_function='relu',
      max_position_embeddings=256, scale_embedding=True, share_encoder_decoder_embeddings=True,
      pad_token_id=vocab - 1, eos_token_id=EOS, decoder_start_token_id=vocab - 1, dropout=0.0)
  return transformers.MarianMTModel(config).eval()


def bench_hf(model: Any, source: np.ndarray, repeats: int, device: str) -> Result:
  """MarianMTModel.generate on `device`: beam 4, min_new_tokens = max_new_tokens = 64."""
  import torch
  model = model.to(device)
  input_ids = torch.as_tensor(source, dtype=torch.long, device=device)
  mask = torch.ones_like(input_ids)

  def run() -> int:
    with torch.inference_mode():
      out = model.generate(input_ids=input_ids, attention_mask=mask, num_beams=BEAM,
                           do_sample=False, min_new_tokens=OUTPUT_LEN,
                           max_new_tokens=OUTPUT_LEN)
    return int((out[:, 1:] != model.config.pad_token_id).sum())  # .sum() waits for the GPU

  return time_runs(f'HuggingFace Marian (torch {torch.__version__}, {device})', run, repeats)


class _Vocabulary:
  """The minimum of a tokenizer that CTranslate2's Marian converter reads."""
  eos_token, unk_token = '</s>', '<unk>'

  def __init__(self, size: int):
    self.tokens = (['<s>', self.eos_token, self.unk_token] + [f't{i}' for i in range(3, size - 1)]
                   + ['<pad>'])

  def get_vocab(self) -> dict[str, int]:
    return {token: i for i, token in enumerate(self.tokens)}


def convert_to_ct2(model: Any, vocab: int, directory: str) -> tuple[str, list[str]]:
  """Convert the Marian model with TransformersConverter -> (model dir, vocabulary)."""
  import ctranslate2

  tokens = _Vocabulary(vocab)

  class Converter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class: Any, path: str, **kwargs: Any) -> Any:
      return tokens

  hf_dir = os.path.join(directory, 'marian')
  model.save_pretrained(hf_dir)
  out_dir = Converter(hf_dir).convert(os.path.join(directory, 'ct2'), quantization='float32')
  return out_dir, tokens.tokens


def bench_ct2(model_dir: str, vocabulary: list[str], source: np.ndarray, compute_type: str,
              threads: int, repeats: int) -> Result:
  """ctranslate2.Translator.translate_batch: beam 4, exactly 64 decoding steps."""
  import ctranslate2
  translator = ctranslate2.Translator(model_dir, device='cpu', compute_type=compute_type,
                                      intra_threads=threads)
  batch = [[vocabulary[i] for i in row] for row in source]

  def run() -> int:
    results = translator.translate_batch(batch, beam_size=BEAM, max_decoding_length=OUTPUT_LEN,
                                         min_decoding_length=OUTPUT_LEN)
    return sum(len(r.hypotheses[0]) for r in results)

  return time_runs(f'CTranslate2 {ctranslate2.__version__} {compute_type}', run, repeats)


def _missing(package: str) -> Optional[str]:
  try:
    __import__(package)
  except ImportError as e:
    return f'skipped: {package} is not installed ({e})'
  return None


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--vocab', type=int, default=32000, help='shared vocabulary size')
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per system')
  parser.add_argument('--systems', default='jax,jax-bf16,hf,ct2',
                      help='comma-separated: jax, jax-bf16, hf, ct2')
  parser.add_argument('--single_thread', action='store_true', help='one thread per system')
  parser.add_argument('--jax_cpu_devices', type=int, default=1,
                      help='split the JAX batch over this many virtual CPU devices')
  parser.add_argument('--batch', type=int, default=8, help='sentences per batch')
  parser.add_argument('--torch_device', default='cpu', help="HuggingFace's device: cpu, cuda")
  args = parser.parse_args(argv)
  systems = args.systems.split(',')
  threads = 1 if args.single_thread else (os.cpu_count() or 1)
  if args.single_thread:  # read by XLA when jax is first imported, below
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false')
  if args.jax_cpu_devices > 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={args.jax_cpu_devices}')
  import jax
  # Ids 3 .. vocab - 2: no padding, EOS or unk in any system's convention.
  batch = args.batch
  source = np.random.default_rng(0).integers(3, args.vocab - 1, (batch, SOURCE_LEN))
  print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; '
        f'jax {jax.__version__} on {jax.devices()[0].platform}', flush=True)
  print(f'base model, vocab {args.vocab}, batch {batch} x {SOURCE_LEN} source tokens, '
        f'beam {BEAM}, {OUTPUT_LEN} output tokens forced, {threads} thread(s)', flush=True)

  results: list[Result] = []
  if 'jax' in systems:
    results.append(bench_jax(source, args.vocab, 'float32', args.repeats))
  if 'jax-bf16' in systems:
    results.append(bench_jax(source, args.vocab, 'bfloat16', args.repeats))
  peers = [s for s in systems if s in ('hf', 'ct2')]
  marian = None
  if peers and not (reason := _missing('torch') or _missing('transformers')):
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    marian = build_marian(args.vocab)
  elif peers:
    print(f'HuggingFace and CTranslate2 {reason}', flush=True)
  if marian is not None and 'hf' in systems:
    results.append(bench_hf(marian, source, args.repeats, args.torch_device))
  if marian is not None and 'ct2' in systems:  # converted from the CPU copy
    marian = marian.to('cpu')
    if reason := _missing('ctranslate2'):
      print(f'CTranslate2 {reason}', flush=True)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        model_dir, vocabulary = convert_to_ct2(marian, args.vocab, tmp)
        for compute_type in ('float32', 'int8'):
          results.append(bench_ct2(model_dir, vocabulary, source, compute_type, threads,
                                   args.repeats))

  hf = next((r for r in results if r.name.startswith('HuggingFace')), None)
  print('\n| system | best s/run | CPU s | sentences/s | output tokens/s | vs HF | runs (s) |')
  print('|---|---|---|---|---|---|---|')
  for r in results:
    vs_hf = f'{r.tokens_per_second / hf.tokens_per_second:.2f}x' if hf else '-'
    runs = ' '.join(f'{s:.2f}' for s in r.seconds)
    print(f'| {r.name} | {r.best:.2f} | {r.best_cpu:.2f} | {batch / r.best:.2f} | '
          f'{r.tokens_per_second:.0f} | {vs_hf} | {runs} |')
  bad = [r.name for r in results if r.output_tokens != batch * OUTPUT_LEN]
  if bad:
    print(f'warning: not exactly {OUTPUT_LEN} tokens per sentence from {bad}', file=sys.stderr)


if __name__ == '__main__':
  main()
