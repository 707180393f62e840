"""Beam-search decoding throughput: transformer_jax vs HuggingFace Marian vs CTranslate2.

The paper's base dimensions (d_model 512, d_ff 2048, 8 heads, 6+6 layers, post-LN, ReLU,
sinusoidal positions, shared embeddings) with random weights, a shared vocabulary of
`--vocab` (default 32000) pieces; a batch of 8 sentences x 32 source tokens; beam 4;
exactly 64 output tokens per sentence (EOS banned until then) so that every system does
the same work (`--batch` changes the 8). The peers decode the same random source ids
with the same dimensions: `MarianMTModel.generate` (PyTorch, float32) and CTranslate2
(that Marian model converted with `TransformersConverter`, float32 and int8).
transformer_jax runs once per entry N of `--jax_cpu_devices`: on a CPU host JAX presents
the CPU as N devices and the batch is split over them, as the translate CLI does (N = 2:
two decoding loops side by side); CTranslate2 likewise with N workers of threads / N
threads each. A missing peer package is skipped with a message.

Every system runs in a child process of its own (two OpenMP runtimes in one process slow
each other down). Each runs once to warm up (compilation), then `--repeats` rounds run
every system once in turn, with a pause between runs (this VM's speed drifts by +-20%
over minutes; taking turns exposes all systems to the same drift); the table reports
each one's fastest run (wall clock), that run's CPU time (all threads of its process)
and its median run. By default every system uses all cores; `--single_thread` pins each to one
thread (XLA, torch and CTranslate2 alike), which compares work rather than parallel
scaling on a busy machine. On a GPU host JAX uses the GPU and `--torch_device cuda` puts
the HuggingFace model there too (CTranslate2 stays on the CPU).

  python benchmarks/bench_decode.py [--vocab 32000] [--repeats 3] [--single_thread]
      [--systems jax,jax-bf16,hf,ct2] [--jax_cpu_devices 1,2] [--batch 8] [--torch_device cpu]

Benchmark-only packages (torch, transformers, ctranslate2) are imported here only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np

SOURCE_LEN, OUTPUT_LEN, BEAM = 32, 64, 4
PAD, EOS = 0, 1
PAUSE_SECONDS = 0.5  # between runs: threads spinning after a run fall asleep

# One timed run of a system -> (wall seconds, CPU seconds of its process, output tokens).
Run = Callable[[], tuple[float, float, int]]


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
  def median(self) -> float:
    return float(np.median(self.seconds))

  @property
  def tokens_per_second(self) -> float:
    return self.output_tokens / self.best


def timed(run: Callable[[], int]) -> Run:
  """Wrap `run` (-> output-token count) to also measure it."""
  def timed_run() -> tuple[float, float, int]:
    start, start_cpu = time.perf_counter(), time.process_time()
    tokens = run()
    return time.perf_counter() - start, time.process_time() - start_cpu, tokens
  return timed_run


def take_turns(systems: dict[str, Run], repeats: int) -> list[Result]:
  """One warm-up run of each system, then `repeats` rounds of one run of each in turn."""
  for name, run in systems.items():
    run()
    print(f'{name}: warmed up', flush=True)
  runs = {name: [] for name in systems}
  for _ in range(repeats):
    for name, run in systems.items():
      time.sleep(PAUSE_SECONDS)
      runs[name].append(run())
  return [Result(name, [r[0] for r in rs], [r[1] for r in rs], rs[-1][2])
          for name, rs in runs.items()]


def jax_run(source: np.ndarray, vocab: int, dtype_name: str) -> tuple[str, Run]:
  """transformer_jax.decoding.beam_search, jit-compiled, 64 forced output tokens, the batch
  split over all of JAX's devices -> (name, timed run)."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from transformer_jax import Transformer, TransformerConfig, decoding, sharding
  dtype = jnp.dtype(dtype_name)
  config = TransformerConfig.base(vocab, dropout_rate=0.0, max_len=256, dtype=dtype)
  ones = jnp.ones((1, 8), jnp.int32)
  # Weights stored in the compute dtype (cast once, not at every step).
  params = jax.jit(lambda key: jax.tree.map(lambda x: x.astype(dtype), nn.meta.unbox(
      Transformer(config).init(key, ones, ones)['params'])))(jax.random.key(0))
  mesh = sharding.create_mesh()
  inputs = sharding.shard_batch({'inputs': source.astype(np.int32)}, mesh)['inputs']
  model = decoding.Model(jax.device_put(params, sharding.replicated(mesh)), config)

  def run() -> int:
    tokens = decoding.beam_search(model, inputs, beam_size=BEAM,
                                  max_extra_len=OUTPUT_LEN - SOURCE_LEN,
                                  max_decode_len=OUTPUT_LEN, min_len=OUTPUT_LEN).tokens
    return int(np.sum(np.asarray(tokens) != PAD))

  where = f'jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].platform}'
  return f'transformer_jax {dtype_name} ({where})', timed(run)


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


def hf_run(model_dir: str, source: np.ndarray, device: str, threads: int) -> tuple[str, Run]:
  """MarianMTModel.generate on `device`: beam 4, min_new_tokens = max_new_tokens = 64."""
  import torch
  import transformers
  torch.set_num_threads(threads)
  model = transformers.MarianMTModel.from_pretrained(model_dir).eval().to(device)
  input_ids = torch.as_tensor(source, dtype=torch.long, device=device)
  mask = torch.ones_like(input_ids)

  def run() -> int:
    with torch.inference_mode():
      out = model.generate(input_ids=input_ids, attention_mask=mask, num_beams=BEAM,
                           do_sample=False, min_new_tokens=OUTPUT_LEN,
                           max_new_tokens=OUTPUT_LEN)
    return int((out[:, 1:] != model.config.pad_token_id).sum())  # .sum() waits for the GPU

  return f'HuggingFace Marian (torch {torch.__version__}, {device})', timed(run)


class _Vocabulary:
  """The minimum of a tokenizer that CTranslate2's Marian converter reads."""
  eos_token, unk_token = '</s>', '<unk>'

  def __init__(self, size: int):
    self.tokens = (['<s>', self.eos_token, self.unk_token] + [f't{i}' for i in range(3, size - 1)]
                   + ['<pad>'])

  def get_vocab(self) -> dict[str, int]:
    return {token: i for i, token in enumerate(self.tokens)}


def save_models(vocab: int, directory: str, ct2: bool) -> None:
  """Save a random Marian model to `directory`/marian and, with `ct2`, its CTranslate2
  conversion (float32) to `directory`/ct2."""
  import torch
  torch.manual_seed(0)
  hf_dir = os.path.join(directory, 'marian')
  build_marian(vocab).save_pretrained(hf_dir)
  if ct2:
    import ctranslate2
    tokens = _Vocabulary(vocab)

    class Converter(ctranslate2.converters.TransformersConverter):
      def load_tokenizer(self, tokenizer_class: Any, path: str, **kwargs: Any) -> Any:
        return tokens

    Converter(hf_dir).convert(os.path.join(directory, 'ct2'), quantization='float32')


def ct2_run(model_dir: str, source: np.ndarray, vocab: int, compute_type: str, threads: int,
            workers: int) -> tuple[str, Run]:
  """ctranslate2.Translator.translate_batch: beam 4, exactly 64 decoding steps; with
  `workers` > 1, that many replicas of threads / workers threads decode parts of the batch."""
  import ctranslate2
  translator = ctranslate2.Translator(model_dir, device='cpu', compute_type=compute_type,
                                      inter_threads=workers,
                                      intra_threads=max(1, threads // workers))
  vocabulary = _Vocabulary(vocab).tokens
  batch = [[vocabulary[i] for i in row] for row in source]
  part = -(-len(batch) // workers)

  def run() -> int:
    results = translator.translate_batch(batch, max_batch_size=part, beam_size=BEAM,
                                         max_decoding_length=OUTPUT_LEN,
                                         min_decoding_length=OUTPUT_LEN)
    return sum(len(r.hypotheses[0]) for r in results)

  how = f' ({workers} workers)' if workers > 1 else ''
  return f'CTranslate2 {ctranslate2.__version__} {compute_type}{how}', timed(run)


def worker(args: argparse.Namespace, source: np.ndarray, threads: int) -> None:
  """Child process: set up `args.worker`, print its name, then a JSON line of
  (wall s, CPU s, tokens) for each line read from stdin."""
  kind, _, detail = args.worker.partition(':')
  if kind == 'jax':
    name, run = jax_run(source, args.vocab, detail)
  elif kind == 'hf':
    name, run = hf_run(os.path.join(args.model_dir, 'marian'), source, args.torch_device,
                       threads)
  else:
    name, run = ct2_run(os.path.join(args.model_dir, 'ct2'), source, args.vocab, detail,
                        threads, args.workers)
  print(name, flush=True)
  for _ in sys.stdin:
    print(json.dumps(run()), flush=True)


def start_worker(kind: str, argv: list[str], workers: int = 1) -> tuple[str, Run]:
  """Start this script as a `kind` worker (see `worker`) -> (its name, a timed run)."""
  command = [sys.executable, os.path.abspath(__file__), *argv, '--worker', kind,
             '--workers', str(workers)]
  # Read by JAX workers only: their CPU device count, and no preallocated GPU memory (the
  # workers of a run share the GPU with each other and with torch).
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(workers), XLA_PYTHON_CLIENT_PREALLOCATE='false')
  child = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
  name = child.stdout.readline().strip()
  if not name:
    raise RuntimeError(f'the {kind} worker failed (its error is above)')

  def run() -> tuple[float, float, int]:
    child.stdin.write('run\n')
    child.stdin.flush()
    return tuple(json.loads(child.stdout.readline()))
  return name, run


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
  parser.add_argument('--jax_cpu_devices', default='1',
                      help='comma-separated: run transformer_jax once per entry, its batch '
                      'split over that many CPU devices (CTranslate2 too, with as many workers)')
  parser.add_argument('--batch', type=int, default=8, help='sentences per batch')
  parser.add_argument('--torch_device', default='cpu', help="HuggingFace's device: cpu, cuda")
  # Child processes (see `worker`).
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--workers', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--model_dir', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  threads = 1 if args.single_thread else (os.cpu_count() or 1)
  # Ids 3 .. vocab - 2: no padding, EOS or unk in any system's convention.
  source = np.random.default_rng(0).integers(3, args.vocab - 1, (args.batch, SOURCE_LEN))
  if args.worker:
    worker(args, source, threads)
    return
  if args.single_thread:  # read by XLA in the worker processes
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false')
  counts = [int(n) for n in args.jax_cpu_devices.split(',')]
  systems = args.systems.split(',')
  print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}',
        flush=True)
  print(f'base model, vocab {args.vocab}, batch {args.batch} x {SOURCE_LEN} source tokens, '
        f'beam {BEAM}, {OUTPUT_LEN} output tokens forced, {threads} thread(s)', flush=True)
  common = ['--vocab', str(args.vocab), '--batch', str(args.batch),
            '--torch_device', args.torch_device] + ['--single_thread'] * args.single_thread

  with tempfile.TemporaryDirectory() as tmp:
    runs = [start_worker(f'jax:{dtype_name}', common, n)
            for system, dtype_name in (('jax', 'float32'), ('jax-bf16', 'bfloat16'))
            if system in systems for n in counts]
    peers = [s for s in systems if s in ('hf', 'ct2')]
    if peers and (reason := _missing('torch') or _missing('transformers')):
      print(f'HuggingFace and CTranslate2 {reason}', flush=True)
      peers = []
    if 'ct2' in peers and (reason := _missing('ctranslate2')):
      print(f'CTranslate2 {reason}', flush=True)
      peers.remove('ct2')
    if peers:
      save_models(args.vocab, tmp, 'ct2' in peers)
      common += ['--model_dir', tmp]
    if 'hf' in peers:
      runs.append(start_worker('hf', common))
    if 'ct2' in peers:
      runs += [start_worker(f'ct2:{compute_type}', common, n)
               for compute_type in ('float32', 'int8') for n in counts]
    results = take_turns(dict(runs), args.repeats)

  hf = next((r for r in results if r.name.startswith('HuggingFace')), None)
  print('\n| system | best s/run | CPU s | sentences/s | output tokens/s | vs HF | median s '
        '| vs HF (medians) | runs (s) |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in results:
    vs_hf = f'{r.tokens_per_second / hf.tokens_per_second:.2f}x' if hf else '-'
    vs_hf_median = f'{hf.median / r.median:.2f}x' if hf else '-'
    runs_text = ' '.join(f'{s:.2f}' for s in r.seconds)
    print(f'| {r.name} | {r.best:.2f} | {r.best_cpu:.2f} | {args.batch / r.best:.2f} | '
          f'{r.tokens_per_second:.0f} | {vs_hf} | {r.median:.2f} | {vs_hf_median} | '
          f'{runs_text} |')
  bad = [r.name for r in results if r.output_tokens != args.batch * OUTPUT_LEN]
  if bad:
    print(f'warning: not exactly {OUTPUT_LEN} tokens per sentence from {bad}', file=sys.stderr)


if __name__ == '__main__':
  main()
