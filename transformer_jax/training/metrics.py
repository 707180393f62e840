"""Training metrics: per-token means of the loss terms (`loss`), model FLOPs / MFU, and
the metric writers. Perplexity = exp(nll / tokens).

Model FLOPs of one training step (the formula behind `mfu`), with N_enc / N_dec
the encoder / decoder parameters without embeddings, S / T the real source /
target tokens of the batch, L_s / L_t the padded row lengths, h·d_k and h·d_v the
attention widths and V the output vocabulary:

  forward  = 2·N_enc·S + 2·N_dec·T + 2·d_model·V·T                      (matmuls)
           + 2·(h·d_k + h·d_v)·(n_enc·S·L_s + n_dec·T·(L_t + L_s))        (attention)
  training = 3 · forward                                (backward = 2 · forward)

i.e. the usual 6·N·tokens plus the attention term, where every query attends to
its whole padded row (what a dense kernel computes). MFU = training FLOPs / step
time / device peak FLOP/s (`PEAK_TFLOPS` by device kind, or the config's value).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging

from transformer_jax.model import TransformerConfig
from transformer_jax.workdir import Workdir

Array = jax.Array

# Dense peak TFLOP/s per device (bf16 on accelerators), by `jax.Device.device_kind` prefix.
PEAK_TFLOPS = {
    'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0, 'TPU v5p': 459.0,
    'TPU v6 lite': 918.0, 'NVIDIA H100': 989.0, 'NVIDIA H200': 989.0,
    'NVIDIA A100': 312.0, 'NVIDIA L4': 121.0,
}


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Per-token means from summed terms: loss, nll, accuracy, perplexity."""
  tokens = max(float(sums['tokens']), 1.0)
  nll = float(sums['nll']) / tokens
  return {'loss': float(sums['loss']) / tokens, 'nll': nll,
          'accuracy': float(sums['correct']) / tokens,
          'perplexity': float(np.exp(min(nll, 50.0)))}


def param_split(params: Any) -> dict[str, int]:
  """Parameter counts of a params tree: total, embeddings, encoder/decoder non-embedding."""
  counts = {'total': 0, 'embedding': 0, 'encoder': 0, 'decoder': 0}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [str(getattr(k, 'key', k)) for k in path]
    size = int(np.prod(leaf.shape))
    counts['total'] += size
    if any(k.endswith('_embed') or k == 'logits' for k in keys):
      counts['embedding'] += size
    elif 'encoder' in keys:
      counts['encoder'] += size
    else:
      counts['decoder'] += size
  return counts


def training_flops(config: TransformerConfig, counts: Mapping[str, int],
                   source_tokens: float, target_tokens: float,
                   source_len: int, target_len: int) -> float:
  """Model FLOPs of one training step (formula in the module docstring)."""
  width = config.num_heads * (config.qk_dim + config.v_dim)
  forward = (2 * counts['encoder'] * source_tokens + 2 * counts['decoder'] * target_tokens
             + 2 * config.d_model * config.output_vocab_size * target_tokens
             + 2 * width * (config.num_encoder_layers * source_tokens * source_len
                            + config.num_decoder_layers * target_tokens
                            * (target_len + source_len)))
  return 3.0 * forward


def peak_flops(device: jax.Device, override_tflops: Optional[float] = None) -> Optional[float]:
  """Peak FLOP/s of `device`: the override if given, else `PEAK_TFLOPS`, else None."""
  if override_tflops:
    return override_tflops * 1e12
  for prefix, tflops in PEAK_TFLOPS.items():
    if device.device_kind.startswith(prefix):
      return tflops * 1e12
  return None


class MetricWriter:
  """Scalars to `<workdir>/metrics.jsonl` and TensorBoard; a no-op unless `enabled`.

  Each `write(step, scalars)` appends one JSON line {"step", "time", **scalars}
  and one TensorBoard event holding them under `<workdir>/tensorboard/`.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    # TensorBoard's record format, written here: its EventFileWriter imports TensorFlow for
    # file I/O whenever it is installed (~3 s at every start, even on synthetic data).
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    paths = Workdir(workdir)
    os.makedirs(paths.tensorboard, exist_ok=True)
    self._jsonl = open(paths.metrics_jsonl, 'a', encoding='utf-8')
    now = time.time()
    name = f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}'
    self._events = RecordWriter(open(os.path.join(paths.tensorboard, name), 'wb'))
    self._events.write(event_pb2.Event(wall_time=now, file_version='brain.Event:2')
                       .SerializeToString())

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    now = time.time()
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), 'time': round(now, 3), **values}) + '\n')
    self._jsonl.flush()
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._events.write(event_pb2.Event(wall_time=now, step=int(step), summary=summary)
                       .SerializeToString())
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


class Interval:
  """Sums of the training steps' metrics, seconds, source tokens and FLOPs between two
  log lines, and the scalars they give (loss, throughput, MFU)."""

  def __init__(self):
    self.sums, self.steps, self.seconds = {}, 0, 0.0
    self.source_tokens, self.flops = 0.0, 0.0

  def add(self, metrics: Mapping[str, float], seconds: float, source_tokens: float,
          flops: float) -> None:
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.steps += 1
    self.seconds += seconds
    self.source_tokens += source_tokens
    self.flops += flops

  def scalars(self, peak: Optional[float]) -> dict[str, float]:
    out = {f'train/{k}': v for k, v in summarize(self.sums).items()}
    out.update({'train/learning_rate': self.sums['learning_rate'] / self.steps,
                'train/grad_norm': self.sums['grad_norm'] / self.steps,
                'perf/step_time_s': self.seconds / self.steps,
                'perf/target_tokens_per_s': self.sums['tokens'] / self.seconds,
                'perf/source_tokens_per_s': self.source_tokens / self.seconds,
                'perf/model_tflops_per_s': self.flops / self.seconds / 1e12})
    if peak:
      out['perf/mfu'] = self.flops / self.seconds / peak
    return out


class TrainLog:
  """The training loop's output: each interval's scalars to `writer` and a tqdm progress bar
  (over the minute budget if there is one, else over the steps), and evaluation lines."""

  def __init__(self, writer: MetricWriter, model_cfg: TransformerConfig,
               counts: Mapping[str, int], peak: Optional[float], config: Any, step: int,
               train_seconds: float, is_main: bool):
    import tqdm
    self._writer, self._model_cfg, self._counts, self._peak = writer, model_cfg, counts, peak
    self._by_seconds, self._interval = bool(config.train_minutes), Interval()
    enabled = is_main and config.progress_bar and sys.stderr.isatty()
    if self._by_seconds:
      self._bar = tqdm.tqdm(
          total=round(config.train_minutes * 60), initial=round(train_seconds), unit='s',
          disable=not enabled,
          bar_format='{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]')
    else:
      self._bar = tqdm.tqdm(total=config.num_train_steps, initial=step, unit='step',
                            disable=not enabled)

  def add(self, metrics: Mapping[str, float], batch: Mapping[str, Any], seconds: float) -> None:
    """One finished step: its metrics, its batch (for tokens and FLOPs), its seconds."""
    inputs, targets = np.asarray(batch['inputs']), np.asarray(batch['targets'])
    source_tokens = float(np.sum(inputs > 0))
    flops = training_flops(self._model_cfg, self._counts, source_tokens,
                           float(np.sum(targets > 0)), inputs.shape[1], targets.shape[1])
    self._interval.add(metrics, seconds, source_tokens, flops)

  def write(self, step: int, seconds: float, train_seconds: float) -> None:
    """Log the interval since the last write (`seconds` of training) and start a new one."""
    interval, self._interval = self._interval, Interval()
    self._bar.update(round(seconds) if self._by_seconds else interval.steps)
    self._bar.set_postfix(loss=f"{interval.sums['loss'] / interval.sums['tokens']:.3f}")
    self._writer.write(step, {**interval.scalars(self._peak), 'train/minutes': train_seconds / 60})

  def write_eval(self, step: int, label: str, scalars: Mapping[str, float],
                 train_seconds: float) -> None:
    """An evaluation's scalars as `label/<name>`, and one line in the log and under the bar."""
    self._writer.write(step, {**{f'{label}/{k}': v for k, v in scalars.items()},
                              'train/minutes': train_seconds / 60})
    line = f'step {step} ({train_seconds / 60:.1f} train min) {label}: ' + ', '.join(
        f'{k} {v:.3f}' for k, v in scalars.items())
    logging.info('%s', line)
    if not self._bar.disable:
      self._bar.write(line)

  def close(self, step: int, train_seconds: float) -> None:
    """Write what is left of the interval; close the progress bar."""
    if self._interval.steps:
      self._writer.write(step, {**self._interval.scalars(self._peak),
                                'train/minutes': train_seconds / 60})
    self._bar.close()
