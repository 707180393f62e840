"""A tiny random MarianMTModel built locally (no download), and greedy decoding of the same
sentences by Transformers and by this library: shared by tests/test_marian.py and
benchmarks/bench_marian_greedy.py.

SentencePiece models are trained on the first lines of the embedded English / Spanish Bible,
`vocab.json` puts OPUS-MT's layout on their pieces (</s> 0, <unk> 1, ..., <pad> last), and
the weights are drawn so that greedy output follows the source and ends at varied lengths
(Transformers' init, std 0.02, repeats one token whatever the input): query/key weights
with std 0.4, the rest 0.2, LayerNorm 1 ± 0.1, an EOS logit bias; larger weights make
float32 rounding grow past 1e-4 in the logits (Transformers' own float32 vs float64).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from typing import Sequence

import numpy as np
import sentencepiece as spm

from transformer_jax import decoding
from transformer_jax.model_config import EOS_ID
from transformer_jax.training.sources import BIBLE_DIR

PIECES = 120


def bible_lines(lang: str, split: str = 'train', count: int = 300) -> list[str]:
  with gzip.open(os.path.join(BIBLE_DIR, f'{split}.{lang}.gz'), 'rt', encoding='utf-8') as f:
    return [line.rstrip('\n') for _, line in zip(range(count), f)]


def _train_spm(lines: Sequence[str]) -> bytes:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=PIECES,
      model_type='unigram', character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
      minloglevel=2, num_threads=1)
  return model.getvalue()


def build_marian_dir(out: str, d_model: int = 32, layers: int = 2, seed: int = 6) -> None:
  """Write a random tiny MarianMTModel and its MarianTokenizer with `save_pretrained`
  to `out` (seed 6: of seeds 1-6, one whose greedy outputs end at the most varied lengths)."""
  import torch
  from transformers import MarianConfig, MarianMTModel, MarianTokenizer
  os.makedirs(out, exist_ok=True)
  models = {'source.spm': _train_spm(bible_lines('en')),
            'target.spm': _train_spm(bible_lines('es'))}
  vocab = {'</s>': 0, '<unk>': 1}
  for name, data in models.items():
    with open(os.path.join(out, name), 'wb') as f:
      f.write(data)
    sp = spm.SentencePieceProcessor(model_proto=data)
    for i in range(sp.get_piece_size()):
      if not (sp.is_control(i) or sp.is_unknown(i)):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
  vocab['<pad>'] = len(vocab)
  with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(vocab, f, indent=2)
  size, pad = len(vocab), len(vocab) - 1
  config = MarianConfig(
      vocab_size=size, decoder_vocab_size=size, d_model=d_model, encoder_layers=layers,
      decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
      encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_position_embeddings=512,
      activation_function='swish', scale_embedding=True, pad_token_id=pad,
      decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0)
  torch.manual_seed(seed)
  model = MarianMTModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'layer_norm' in name:
        p.normal_(1.0 if name.endswith('weight') else 0.0, 0.1)
      else:  # sharper attention, so that the output follows the source
        p.normal_(0.0, 0.4 if name.split('.')[-2] in ('q_proj', 'k_proj') else 0.2)
    model.model.shared.weight[pad] = 0.0  # as in OPUS-MT: Marian's decoder starts from zeros
    model.final_logits_bias.normal_(0.0, 0.1)
    model.final_logits_bias[0, 0] = 1.0  # EOS: sentences end at varied lengths
  model.save_pretrained(out)
  MarianTokenizer(vocab=os.path.join(out, 'vocab.json'),
                  source_spm=os.path.join(out, 'source.spm'),
                  target_spm=os.path.join(out, 'target.spm')).save_pretrained(out)


def hf_greedy(hf_dir: str, sentences: Sequence[str], max_new_tokens: int) -> list[list[int]]:
  """Transformers' greedy output (Marian ids, EOS kept) of each sentence, batch-padded."""
  import torch
  from transformers import MarianMTModel, MarianTokenizer
  model, tok = MarianMTModel.from_pretrained(hf_dir), MarianTokenizer.from_pretrained(hf_dir)
  batch = tok(list(sentences), return_tensors='pt', padding=True)
  with torch.no_grad():
    out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                         forced_eos_token_id=None, bad_words_ids=[[model.config.pad_token_id]])
  eos = model.config.eos_token_id
  return [_until_eos(row[1:], eos) for row in out.tolist()]


def ours_greedy(model, vocab, sentences: Sequence[str],
                max_new_tokens: int) -> list[list[int]]:
  """This library's greedy output (Marian ids, EOS kept) of each sentence (`model`: a
  `decoding.Model`), cut like Transformers' to `max_new_tokens`: decoded one token
  further, where EOS would be forced, and that token dropped."""
  ids = [vocab.encode(s) for s in sentences]
  inputs = np.zeros((len(ids), max(map(len, ids))), np.int32)
  for row, x in zip(inputs, ids):
    row[:len(x)] = x
  out = decoding.greedy(model, inputs, max_extra_len=10_000,
                        max_decode_len=max_new_tokens + 1).best
  marian = np.asarray(vocab.marian_ids)
  return [_until_eos(marian[row].tolist(), int(marian[EOS_ID]))[:max_new_tokens]
          for row in np.asarray(out)]


def _until_eos(row: list[int], eos: int) -> list[int]:
  return row[:row.index(eos) + 1] if eos in row else row
