"""Lines of text in, what translation toolkits' users ask for out: n-best lists with scores,
word alignments, sampled translations (back-translation), force-decoding scores of given
translations; for one model or an ensemble (`inference.load_ensemble`).

`make_search_fn(model, SearchOptions(...))` decodes [B, S] batches; `search_lines` runs it
over lines (batched by length like `inference.translate_lines`) -> per line its
`Hypothesis` list, best first; `format_lines` writes them as the translate CLI does;
`score_lines` scores line-aligned (source, target) pairs (`scoring.score`). No TensorFlow.

Scores, in nats: `log_prob` is the sum of the output's token log-probabilities, EOS
included (an ensemble's: the mean of its members'); `score` is that over the GNMT length
penalty ((5 + n) / 6) ** alpha of its n tokens, what beam search ranks by (also reported
for greedy decoding and sampling, from their log-probabilities).

An output is a text, and its scores are the text's: those of the ids the vocabulary
encodes it to (`encode_target`), which `score_lines` (the score CLI) computes for it. An
output at the length limit ends in a forced EOS, scored (`decoding`). Where the search
emitted another segmentation than the text's own (the text re-encodes to other ids, e.g.
'▁a' 'b' where the vocabulary has '▁ab'), the hypothesis is rescored by teacher forcing;
an n-best list is then sorted by these scores, a text found twice kept once.

Word alignments index whitespace words of the texts as written (`line.split()` of the
input line and of the output): each token's word is found from the characters it covers
(`scoring.span_words`), so characters SentencePiece drops and unknown pieces (' ⁇ ') count
as in the text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from transformer_jax import decoding, inference, scoring
from transformer_jax.model_config import EOS_ID

# (source ids [B, S], batch number) -> tokens [B, n, L], scores [B, n], log-probs [B, n],
# cross-attention [B, n, L, S] (None without alignments).
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray,
                                             Optional[np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """How to decode (`search`: beam, greedy or sampling; `decoding.Search`); sampling's
  `seed` (batch b of a run samples with the key `fold_in(key(seed), b)`); `alignment`:
  also compute the cross-attention for word alignments (`scoring.cross_attention`, of the
  first member of an ensemble)."""
  search: decoding.Search = decoding.Search()
  seed: int = 0
  alignment: bool = False


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One output: its text, `score` (length-penalised) and `log_prob` (see the module's
  docstring), and (with alignments) its (source word, output word) pairs, sorted."""
  text: str
  score: float
  log_prob: float
  alignment: tuple[tuple[int, int], ...] = ()


def make_search_fn(model: inference.LoadedModel, options: SearchOptions,
                   mesh: Optional[Mesh] = None) -> SearchFn:
  """A `SearchFn` decoding with `options` (`inference.make_decode_fn`; with `mesh`, per
  device)."""
  decode_fn = inference.make_decode_fn(model.decoder, options.search, mesh)
  aligner = model.decoder.models[0]

  def search_fn(inputs: np.ndarray, batch_number: int):
    key = jax.random.fold_in(jax.random.key(options.seed), batch_number)
    result = decode_fn(inputs, key if options.search.sample else None)
    tokens, log_probs = result.tokens, result.log_probs
    scores = np.asarray(result.scores(options.search.alpha))
    attention = None
    if options.alignment:
      rows, n, length = tokens.shape
      attention = np.asarray(scoring.cross_attention(
          aligner, np.repeat(inputs, n, axis=0),
          tokens.reshape(rows * n, length))).reshape(rows, n, length, inputs.shape[1])
    return tokens, scores, log_probs, attention
  return search_fn


def _padded(words: Sequence[int], width: int) -> list[int]:
  """Token word indices (`scoring.span_words`) completed with -1 (EOS, padding) to `width`."""
  return list(words) + [-1] * (width - len(words))


def source_words(vocab: Any, line: str, count: int) -> list[int]:
  """The whitespace word of `line` (as written: a BOM starting it, which encoding drops,
  counts) that each of the first `count` tokens of its source ids belongs to (-1: none;
  `scoring.span_words`)."""
  text = line.removeprefix(inference.BOM)
  shift = len(line) - len(text)
  return scoring.span_words(line, [(b + shift, e + shift) for b, e in vocab.spans(text)][:count])


def search_lines(lines: Sequence[str], model: inference.LoadedModel, options: SearchOptions, *,
                 batch_size: int, mesh: Optional[Mesh] = None,
                 progress: bool = True) -> list[list[Hypothesis]]:
  """Decode `lines` with `options` (`make_search_fn`) -> per line its hypotheses, best
  first (beam search: those that finished; none for a line with no content, which never
  reaches the model). Batching and the cutting of long sources as in
  `inference.translate_lines`. Scores are those of each output's text (the module's
  docstring): outputs that re-encode to other ids are rescored (`_rescore`)."""
  vocab, search_fn = model.vocab, make_search_fn(model, options, mesh)
  results: list[list[Hypothesis]] = [[] for _ in lines]
  resegmented: dict[tuple[int, int], list[int]] = {}
  sources = inference.encode_lines(lines, vocab, model.max_len)
  batches = inference.length_batches({i: (ids,) for i, ids in sources.items()}, batch_size,
                                     model.max_len, progress)
  for number, (rows, (inputs,)) in enumerate(batches):
    tokens, scores, log_probs, attention = search_fn(inputs, number)
    for r, i in enumerate(rows):
      words = _padded(source_words(vocab, lines[i], len(sources[i]) - 1), inputs.shape[1])
      for k, output in enumerate(decoding.trim(tokens[r])):
        if not np.isfinite(scores[r, k]):
          continue  # beam search: fewer than n_best finished
        text, spans = vocab.decode_spans(output)
        pairs = () if attention is None else tuple(scoring.align(
            attention[r, k], words,
            _padded(scoring.span_words(text, spans), tokens.shape[-1])))
        results[i].append(Hypothesis(text, float(scores[r, k]), float(log_probs[r, k]), pairs))
        canonical = inference.fit_source(vocab.encode_target(text), model.max_len)
        if canonical != output + [EOS_ID]:
          resegmented[i, len(results[i]) - 1] = canonical
  _rescore(results, resegmented, sources, model, options.search.alpha, batch_size)
  return [_best_first(found) for found in results]


def _rescore(results: list[list[Hypothesis]], resegmented: dict[tuple[int, int], list[int]],
             sources: dict[int, list[int]], model: inference.LoadedModel, alpha: float,
             batch_size: int) -> None:
  """Give hypothesis k of line i (`results[i][k]`, a key of `resegmented`) the scores of
  its text's ids `resegmented[i, k]` (teacher-forced, as `score_lines`), in place."""
  pairs = {key: (sources[key[0]], ids) for key, ids in resegmented.items()}
  for (i, k), (log_prob, _) in _force_decode(pairs, model, batch_size).items():
    penalty = float(decoding.length_penalty(len(resegmented[i, k]), alpha))
    results[i][k] = dataclasses.replace(results[i][k], score=log_prob / penalty,
                                        log_prob=log_prob)


def _best_first(found: Sequence[Hypothesis]) -> list[Hypothesis]:
  """Hypotheses sorted by score, best first (stable), each text once."""
  best: dict[str, Hypothesis] = {}
  for h in sorted(found, key=lambda h: -h.score):
    best.setdefault(h.text, h)
  return list(best.values())


def format_lines(results: Sequence[Sequence[Hypothesis]], *, n_best: bool, scores: bool,
                 alignment: bool) -> list[str]:
  """The translate CLI's output. 1-best: one line per input, `hypothesis`, then with
  `scores` ` ||| score ||| log_prob`, then with `alignment` ` ||| i-j i-j ...` (source
  word i, output word j, 0-based; Pharaoh); an empty line where there is no hypothesis.
  n-best: per hypothesis `index ||| hypothesis ||| score ||| log_prob` (index: the
  0-based input line), then ` ||| i-j ...` with `alignment`; best first."""
  def fields(h: Hypothesis, with_scores: bool) -> list[str]:
    return ([h.text] + ([f'{h.score:.6f}', f'{h.log_prob:.6f}'] if with_scores else [])
            + ([scoring.pharaoh(h.alignment)] if alignment else []))
  if n_best:
    return [' ||| '.join([str(index)] + fields(h, True))
            for index, hypotheses in enumerate(results) for h in hypotheses]
  return [' ||| '.join(fields(h[0], scores)) if h else '' for h in results]


def score_lines(sources: Sequence[str], targets: Sequence[str],
                model: inference.LoadedModel, *, batch_size: int, normalise: bool = False,
                progress: bool = True) -> list[tuple[float, list[float]]]:
  """Force-decoding scores of line-aligned (source, target) pairs -> per pair (log p(target
  | source), or with `normalise` its mean per token; each target token's log-probability,
  EOS last), from `scoring.score` on batches bucketed by length as in translation. Targets
  are encoded as targets (`encode_target`: an imported model's target SentencePiece
  model). Blank lines are scored too (as EOS alone); sources and targets longer than the
  model's max_len are cut to it (EOS kept), with a warning."""
  if len(sources) != len(targets):
    raise ValueError(f'{len(sources)} sources but {len(targets)} targets')
  source_ids = inference.encode_lines(sources, model.vocab, model.max_len, skip_empty=False,
                                      what='source lines')
  target_ids = inference.encode_lines(targets, model.vocab, model.max_len, target=True,
                                      what='target lines')
  scores = _force_decode({i: (source_ids[i], target_ids[i]) for i in range(len(sources))},
                         model, batch_size, normalise=normalise, progress=progress)
  return [scores[i] for i in range(len(sources))]


def _force_decode(pairs: dict[Any, tuple[list[int], list[int]]], model: inference.LoadedModel,
                  batch_size: int, *, normalise: bool = False,
                  progress: bool = False) -> dict[Any, tuple[float, list[float]]]:
  """(source ids, target ids) pairs, each EOS-terminated -> per key (the target's total or,
  with `normalise`, mean log-probability; each target token's), from `scoring.score` on
  batches bucketed by length (`inference.length_batches`)."""
  scores = {}
  for keys, (inputs, outputs) in inference.length_batches(pairs, batch_size, model.max_len,
                                                          progress):
    total, per_token = (np.asarray(x) for x in scoring.score(
        model.decoder, inputs, outputs, normalise=normalise))
    for r, key in enumerate(keys):
      scores[key] = (float(total[r]), per_token[r, :len(pairs[key][1])].tolist())
  return scores
