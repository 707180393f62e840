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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from transformer_jax import decoding, inference, scoring

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


def _word_indices(vocab: Any, ids: Sequence[int], width: int, words: int) -> list[int]:
  """Each of `width` token positions' whitespace word index (`scoring.word_indices` of the
  pieces of `ids`, the tokens before EOS); -1 for EOS, padding and pieces beyond `words`
  (a lone trailing '▁' that the text does not keep)."""
  indices = [w if w < words else -1 for w in scoring.word_indices(vocab.pieces(ids))]
  return indices + [-1] * (width - len(indices))


def search_lines(lines: Sequence[str], search_fn: SearchFn, vocab: Any, *, batch_size: int,
                 max_source_len: int, progress: bool = True) -> list[list[Hypothesis]]:
  """Decode `lines` -> per line its hypotheses, best first (beam search: those that
  finished; none for a blank line, which never reaches the model). Batching and the
  cutting of long sources as in `inference.translate_lines`."""
  results: list[list[Hypothesis]] = [[] for _ in lines]
  sources = inference.encode_lines(lines, vocab, max_source_len)
  batches = inference.length_batches({i: (ids,) for i, ids in sources.items()}, batch_size,
                                     max_source_len, progress)
  for number, (rows, (inputs,)) in enumerate(batches):
    tokens, scores, log_probs, attention = search_fn(inputs, number)
    for r, i in enumerate(rows):
      source_words = _word_indices(vocab, sources[i][:-1], inputs.shape[1], len(lines[i].split()))
      for k, output in enumerate(decoding.trim(tokens[r])):
        if not np.isfinite(scores[r, k]):
          continue  # beam search: fewer than n_best finished
        text = vocab.decode(output)
        pairs = () if attention is None else tuple(scoring.align(
            attention[r, k], source_words,
            _word_indices(vocab, output, tokens.shape[-1], len(text.split()))))
        results[i].append(Hypothesis(text, float(scores[r, k]), float(log_probs[r, k]), pairs))
  return results


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
  EOS last), from `scoring.score` on batches bucketed by length as in translation. Blank
  lines are scored too (as EOS alone); sources and targets longer than the model's
  max_len are cut to it (EOS kept), with a warning."""
  if len(sources) != len(targets):
    raise ValueError(f'{len(sources)} sources but {len(targets)} targets')
  encode = lambda lines, what: inference.encode_lines(lines, model.vocab, model.max_len,
                                                      skip_empty=False, what=what)
  source_ids, target_ids = encode(sources, 'source lines'), encode(targets, 'target lines')
  results: list[tuple[float, list[float]]] = [(0.0, [])] * len(sources)
  pairs = {i: (source_ids[i], target_ids[i]) for i in range(len(sources))}
  for rows, (inputs, outputs) in inference.length_batches(pairs, batch_size, model.max_len,
                                                          progress):
    total, per_token = (np.asarray(x) for x in scoring.score(
        model.decoder, inputs, outputs, normalise=normalise))
    for r, i in enumerate(rows):
      results[i] = (float(total[r]), per_token[r, :len(target_ids[i])].tolist())
  return results
