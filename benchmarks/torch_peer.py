"""The PyTorch peer the benchmarks compare against (never imported by the package or tests).

`TorchTransformer`: `torch.nn.Transformer` with one shared (tied) embedding table for
source, target and output, sinusoidal positions, embeddings scaled by sqrt(d_model);
trained with label-smoothed cross-entropy over real tokens, Adam(0.9, 0.98, 1e-9) and
lr = multiplier · d^-0.5 · min(step^-0.5, step · warmup^-1.5).

As a script it is the demo's peer recipe on the project's Bible split (same gz files,
same SentencePiece model): pre-LN, d_model 256, 3+3 layers, 4 heads, d_ff 1024,
dropout 0.1, ~4k-token length-sorted batches, warmup 800, multiplier 2, greedy
decoding; it prints/appends sacreBLEU on the test books at given training minutes
(evaluation time excluded):

  python benchmarks/torch_peer.py --spm workdir_demo/spm.model --eval_at 10,20,30,40 \
      --out benchmarks/results/torch_bleu.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIBLE = os.path.join(ROOT, 'transformer_jax', 'data', 'bible')
EOS = 1


class TorchTransformer(nn.Module):
  """Encoder-decoder Transformer, tied embeddings: ids [B, S], [B, T] -> logits [B, T, V]."""

  def __init__(self, vocab: int, d_model: int = 512, nhead: int = 8, layers: int = 6,
               d_ff: int = 2048, dropout: float = 0.1, pre_norm: bool = False,
               max_len: int = 512):
    super().__init__()
    self.d_model = d_model
    self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
    nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
    position = torch.arange(max_len)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    self.register_buffer('positions', table)
    self.dropout = nn.Dropout(dropout)
    self.transformer = nn.Transformer(d_model, nhead, layers, layers, d_ff, dropout,
                                      batch_first=True, norm_first=pre_norm)

  def _embed(self, ids: torch.Tensor) -> torch.Tensor:
    return self.dropout(self.embed(ids) * self.d_model ** 0.5 + self.positions[:ids.shape[1]])

  def encode(self, src: torch.Tensor) -> torch.Tensor:
    return self.transformer.encoder(self._embed(src), src_key_padding_mask=src == 0)

  def decode(self, memory: torch.Tensor, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
    out = self.transformer.decoder(self._embed(tgt_in), memory, tgt_mask=causal,
                                   tgt_is_causal=True, memory_key_padding_mask=src == 0)
    return out @ self.embed.weight.T

  def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    tgt_in = F.pad(tgt, (1, 0))[:, :-1]  # shift right, 0 = start symbol
    return self.decode(self.encode(src), src, tgt_in)


def make_optimizer(model: nn.Module, d_model: int, warmup: int, multiplier: float):
  opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda i: multiplier * d_model ** -0.5 * min((i + 1) ** -0.5, (i + 1) * warmup ** -1.5))
  return opt, sched


def train_step(model: nn.Module, opt, sched, src: torch.Tensor, tgt: torch.Tensor,
               label_smoothing: float = 0.1) -> float:
  """One Adam step on the label-smoothed loss per real target token; returns the loss."""
  logits = model(src, tgt)
  loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                         ignore_index=0, label_smoothing=label_smoothing)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  sched.step()
  return loss.item()


@torch.no_grad()
def greedy(model: TorchTransformer, src: torch.Tensor, max_extra: int = 50) -> list[list[int]]:
  """Greedy decoding (prefix recomputed each step) of [B, S] -> ids up to EOS per row."""
  model.eval()
  memory = model.encode(src)
  out = torch.zeros(src.shape[0], 1, dtype=torch.long)
  done = torch.zeros(src.shape[0], dtype=torch.bool)
  for _ in range(src.shape[1] + max_extra):
    token = model.decode(memory, src, out)[:, -1].argmax(-1)
    token = torch.where(done, torch.zeros_like(token), token)
    out = torch.cat([out, token[:, None]], 1)
    done |= token == EOS
    if bool(done.all()):
      break
  model.train()
  rows = []
  for row in out[:, 1:].tolist():
    rows.append(row[:row.index(EOS)] if EOS in row else [t for t in row if t])
  return rows


def _read(split: str, lang: str) -> list[str]:
  with gzip.open(os.path.join(BIBLE, f'{split}.{lang}.gz'), 'rt', encoding='utf-8') as f:
    return [line.rstrip('\n') for line in f]


def _token_batches(pairs: list[tuple[list[int], list[int]]], tokens: int,
                   rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor]]:
  """Length-sorted batches of about `tokens` (padded) tokens per side, in random order."""
  order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
  batches, start = [], 0
  while start < len(order):
    end = start
    longest = 0
    while end < len(order):
      longest = max(longest, len(pairs[order[end]][0]), len(pairs[order[end]][1]))
      if longest * (end - start + 1) > tokens and end > start:
        break
      end += 1
    rows = [pairs[i] for i in order[start:end]]
    src = torch.zeros(len(rows), max(len(s) for s, _ in rows), dtype=torch.long)
    tgt = torch.zeros(len(rows), max(len(t) for _, t in rows), dtype=torch.long)
    for r, (s, t) in enumerate(rows):
      src[r, :len(s)], tgt[r, :len(t)] = torch.tensor(s), torch.tensor(t)
    batches.append((src, tgt))
    start = end
  rng.shuffle(batches)
  return batches


def _bleu(model: TorchTransformer, sp, sources: list[str], references: list[str]) -> float:
  import sacrebleu
  encoded = [sp.encode(s)[:255] + [EOS] for s in sources]
  order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
  hyps = [''] * len(encoded)
  for start in range(0, len(order), 64):
    rows = order[start:start + 64]
    src = torch.zeros(len(rows), max(len(encoded[i]) for i in rows), dtype=torch.long)
    for r, i in enumerate(rows):
      src[r, :len(encoded[i])] = torch.tensor(encoded[i])
    for i, ids in zip(rows, greedy(model, src)):
      hyps[i] = sp.decode(ids)
  return sacrebleu.corpus_bleu(hyps, [references]).score


def main() -> None:
  parser = argparse.ArgumentParser(description='PyTorch peer recipe on the Bible split.')
  parser.add_argument('--spm', required=True, help='SentencePiece model (the demo workdir one)')
  parser.add_argument('--eval_at', default='10,20,30,40', help='training minutes')
  parser.add_argument('--tokens', type=int, default=4096)
  parser.add_argument('--pre_norm', type=int, default=1)
  parser.add_argument('--warmup', type=int, default=800)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--num_test', type=int, default=-1, help='first N test verses; -1: all')
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results',
                                                    'torch_bleu.jsonl'))
  args = parser.parse_args()
  import sentencepiece as spm
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  sp = spm.SentencePieceProcessor(model_file=args.spm)
  pairs = [(sp.encode(s)[:127] + [EOS], sp.encode(t)[:127] + [EOS])
           for s, t in zip(_read('train', 'en'), _read('train', 'es'))]
  test_src, test_ref = _read('test', 'en'), _read('test', 'es')
  if args.num_test > 0:
    test_src, test_ref = test_src[:args.num_test], test_ref[:args.num_test]
  model = TorchTransformer(sp.get_piece_size(), 256, 4, 3, 1024, 0.1, bool(args.pre_norm))
  opt, sched = make_optimizer(model, 256, args.warmup, 2.0)
  marks = [float(m) for m in args.eval_at.split(',')]
  rng = random.Random(0)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  trained, step, loss = 0.0, 0, float('nan')
  while marks:
    for src, tgt in _token_batches(pairs, args.tokens, rng):
      start = time.perf_counter()
      loss = train_step(model, opt, sched, src, tgt)
      trained += time.perf_counter() - start
      step += 1
      if trained >= marks[0] * 60:
        score = _bleu(model, sp, test_src, test_ref)
        record = {'system': 'torch', 'minutes': marks.pop(0), 'step': step, 'loss': loss,
                  'test_bleu': score, 'test_verses': len(test_src),
                  'pre_norm': bool(args.pre_norm), 'warmup': args.warmup}
        print(json.dumps(record), flush=True)
        with open(args.out, 'a', encoding='utf-8') as f:
          f.write(json.dumps(record) + '\n')
        if not marks:
          break


if __name__ == '__main__':
  main()
