"""Searches over a step (`steps.Step`): greedy, ancestral sampling and beam search.

Each is a jit-compiled `lax.while_loop` with named state over global arrays (beam search:
one loop a length bucket, `horizons`), so it runs unchanged on batches sharded over a
device mesh; with `mesh=`, each device decodes its share of the rows instead
(`devices.run`). Shapes: B = batch, S = source length, K = beam size, L =
`max_decode_len` (static), V = vocabulary.

Every search returns a `Result`: tokens [B, n, L] (each output's tokens, its EOS, zeros
after it) and their log-probabilities [B, n] (n = 1, or beam search's `n_best`). Token 0
(padding, the decoder's start symbol) is never emitted. The length limit of a sentence is
`min(source_length + max_extra_len, L)` tokens, EOS included, where source_length counts
its non-pad tokens, so an output depends neither on its padding nor on the rest of the
batch. At the limit EOS is forced (as fairseq does): every output ends in EOS and its
log-probability includes log p(EOS | output), which is what scoring the output computes.
`min_len` bans EOS until that many tokens precede it (the limit wins); neither rule
renormalises the step's log-probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import Mesh

from transformer_jax import backend
from transformer_jax.decoding import devices
from transformer_jax.decoding.sampling import filter_logits
from transformer_jax.decoding.steps import NEG_INF, Start, Step
from transformer_jax.model_config import EOS_ID, PAD_ID

Array = jax.Array


@struct.dataclass
class Result:
  """Outputs of a search, best first: `tokens` [B, n, L] and `log_probs` [B, n] (-inf
  where beam search finished fewer than n hypotheses)."""
  tokens: Array
  log_probs: Array

  @property
  def best(self) -> Array:
    """[B, L] the best output of each sentence."""
    return self.tokens[:, 0]

  def lengths(self) -> Array:
    """[B, n] tokens of each output, EOS included."""
    return jnp.sum(self.tokens != PAD_ID, axis=-1)

  def scores(self, alpha: float) -> Array:
    """[B, n] log-probabilities over the GNMT length penalty (what beam search ranks by)."""
    return self.log_probs / length_penalty(self.lengths(), alpha)


@dataclasses.dataclass(frozen=True)
class Search:
  """How to decode: beam search (`beam_size` > 1, with the GNMT length penalty `alpha`;
  its `n_best` best), greedy (`beam_size` 1) or, with `sample`, ancestral sampling at
  `temperature` from the `top_k` most likely tokens (0: all) and their nucleus of mass
  `top_p` (`sampling.filter_logits`). Outputs have at most source length +
  `max_extra_len` tokens; EOS is banned until `min_len` tokens precede it."""
  beam_size: int = 4
  alpha: float = 0.6
  max_extra_len: int = 50
  n_best: int = 1
  min_len: int = 0
  sample: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    """ValueError naming the first field out of range ('top_p must be in (0, 1], got 2')."""
    checks = {'beam_size': (self.beam_size >= 1, '>= 1'),
              'alpha': (0 <= self.alpha < math.inf, 'a finite number >= 0'),
              'n_best': (1 <= self.n_best <= self.beam_size,
                         f'in [1, beam_size={self.beam_size}]'),
              'max_extra_len': (self.max_extra_len >= 0, '>= 0'),
              'min_len': (self.min_len >= 0, '>= 0'),
              'temperature': (0 <= self.temperature < math.inf, 'a finite number >= 0'),
              'top_k': (self.top_k >= 0, '>= 0'),
              'top_p': (0 < self.top_p <= 1, 'in (0, 1]')}
    for name, (ok, rule) in checks.items():
      if not ok:
        raise ValueError(f'{name} must be {rule}, got {getattr(self, name)}')


def length_penalty(length: Array, alpha: Any) -> Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
  return ((5.0 + length) / 6.0) ** alpha


def _limits(inputs: Array, max_extra_len: Array, length: int) -> Array:
  """[B] per-sentence output length limits: min(non-pad source length + extra, L), >= 1."""
  source_len = jnp.sum(inputs != PAD_ID, axis=-1)
  return jnp.clip(source_len + max_extra_len, 1, length).astype(jnp.int32)


def _decode_len(step: Step, inputs: Array, max_extra_len: int,
                max_decode_len: Optional[int]) -> int:
  """Static output length L: S + max_extra_len by default, never beyond the step's
  position table."""
  length = inputs.shape[1] + max_extra_len if max_decode_len is None else max_decode_len
  return max(1, min(length, *[m for m in [step.max_len] if m is not None]))


def _ban_early_eos(log_probs: Array, length: Array, min_len: Array, at_limit: Array) -> Array:
  """[R, V] log-probs of the `length`-th token with EOS banned while `length` <= min_len,
  except in rows at their limit ([R] bool). Only the EOS column is written."""
  eos = log_probs[:, EOS_ID]
  return log_probs.at[:, EOS_ID].set(jnp.where((length > min_len) | at_limit, eos, NEG_INF))


@functools.partial(jax.jit, static_argnames=('length', 'greedy', 'top_k', 'top_p'))
def _sample_loop(step: Step, inputs: Array, rng: Array, temperature: Array,
                 max_extra_len: Array, min_len: Array, *, length: int, greedy: bool,
                 top_k: int, top_p: float) -> Result:
  """Greedy (argmax) or ancestral sampling -> Result with n = 1."""
  batch = inputs.shape[0]
  limits = _limits(inputs, max_extra_len, length)

  @struct.dataclass
  class State:
    index: Array      # tokens so far
    tokens: Array     # [B, L]
    done: Array       # [B]
    log_probs: Array  # [B]
    step: Any

  def body(s: State) -> State:
    previous = jnp.where(s.index > 0, lax.dynamic_index_in_dim(
        s.tokens, jnp.maximum(s.index - 1, 0), axis=1, keepdims=False), PAD_ID)
    log_probs, step_state = step.log_probs(s.step, previous, s.index)
    at_limit = s.index + 1 >= limits
    log_probs = _ban_early_eos(log_probs, s.index + 1, min_len, at_limit)
    if greedy:
      token = jnp.argmax(log_probs, axis=-1)
    else:
      key = jax.random.fold_in(rng, s.index)
      token = jax.random.categorical(key, filter_logits(log_probs, temperature, top_k, top_p))
    # At the limit EOS; where nothing is allowed (a constraint's dead end), EOS at -inf.
    token = jnp.where(at_limit | (token == PAD_ID), EOS_ID, token)
    token = jnp.where(s.done, PAD_ID, token).astype(jnp.int32)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    return State(s.index + 1, lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.index)),
                 s.done | (token == EOS_ID),
                 s.log_probs + jnp.where(s.done, 0.0, token_log_prob), step_state)

  start = Start(inputs, limits, 1, length)
  state = State(jnp.zeros((), jnp.int32), jnp.zeros((batch, length), jnp.int32),
                jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32), step.init(start))
  state = lax.while_loop(lambda s: (s.index < length) & ~jnp.all(s.done), body, state)
  return Result(state.tokens[:, None], state.log_probs[:, None])


def greedy(step: Step, inputs: Array, *, max_extra_len: int = 50,
           max_decode_len: Optional[int] = None, min_len: int = 0,
           mesh: Optional[Mesh] = None) -> Result:
  """Greedy decoding of [B, S] source ids -> Result (n = 1). `max_decode_len` (L,
  static) defaults to S + max_extra_len; with `mesh`, each device decodes its rows."""
  length = _decode_len(step, inputs, max_extra_len, max_decode_len)
  return devices.run(_sample_loop, step, inputs, (jax.random.key(0), 1.0, max_extra_len,
                                                  min_len), mesh,
                     length=length, greedy=True, top_k=0, top_p=1.0)


def sample(step: Step, inputs: Array, rng: Array, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, max_extra_len: int = 50,
           max_decode_len: Optional[int] = None, min_len: int = 0,
           mesh: Optional[Mesh] = None) -> Result:
  """Ancestral sampling from softmax(log_probs / temperature), restricted to the `top_k`
  most likely tokens (0: all) and their nucleus of mass `top_p` (1: all) -> Result with
  the step's log-probabilities of the sampled tokens (unfiltered). The same `rng` gives
  the same samples; temperature 0 (the limit) is greedy decoding. With `mesh`, each
  device samples its rows from `rng` folded with its shard index."""
  Search(temperature=temperature, top_k=top_k, top_p=top_p)  # checks the values
  if temperature == 0:
    return greedy(step, inputs, max_extra_len=max_extra_len, max_decode_len=max_decode_len,
                  min_len=min_len, mesh=mesh)
  length = _decode_len(step, inputs, max_extra_len, max_decode_len)
  return devices.run(_sample_loop, step, inputs, (rng, temperature, max_extra_len, min_len),
                     mesh, length=length, greedy=False, top_k=top_k, top_p=float(top_p))


@struct.dataclass
class BeamState:
  """Beam search's loop state for B sentences of K hypotheses."""
  index: Array               # tokens so far (scalar)
  alive_tokens: Array        # [B, K, L] the K best unfinished hypotheses
  alive_log_probs: Array     # [B, K]
  finished_tokens: Array     # [B, K, L] the K best finished ones, best first
  finished_scores: Array     # [B, K] their log-probs over the length penalty
  finished_log_probs: Array  # [B, K]
  done: Array                # [B] sentences whose search has ended
  step: Any                  # the step's state, K rows per sentence


def _continuations(log_probs: Array, alive_log_probs: Array, at_limit: Array
                   ) -> tuple[Array, Array, Array]:
  """The 2K best continuations of each sentence's K alive hypotheses (log-probs [B·K, V],
  alive log-probs [B, K]; rows at their limit [B·K] continue with EOS alone) -> their
  log-probs, the hypothesis each continues and its token, [B, 2K] each, best first.

  They are among the 2K best tokens of each hypothesis: those are ranked (K·2K candidates,
  not K·V). 2K, because at most K of them end in EOS, so K can stay alive."""
  batch, k = alive_log_probs.shape
  width = min(2 * k, log_probs.shape[-1])
  beam_log_probs, beam_tokens = backend.top_k(log_probs, width)
  eos_only = jnp.where(jnp.arange(width) == 0, log_probs[:, EOS_ID][:, None], NEG_INF)
  beam_log_probs = jnp.where(at_limit[:, None], eos_only, beam_log_probs)
  beam_tokens = jnp.where(at_limit[:, None], EOS_ID, beam_tokens)
  candidates = alive_log_probs[:, :, None] + beam_log_probs.reshape(batch, k, width)
  top_log_probs, top_index = lax.top_k(candidates.reshape(batch, k * width), 2 * k)
  token = jnp.take_along_axis(beam_tokens.reshape(batch, k * width), top_index, axis=1)
  return top_log_probs, top_index // width, token


def _merge_finished(s: BeamState, tokens: Array, log_probs: Array, ends: Array,
                    alpha: Array) -> tuple[Array, Array, Array]:
  """The K best finished hypotheses of those so far and the candidates that `ends` [B, 2K]
  marks (tokens [B, 2K, L], log-probs [B, 2K]) -> their tokens, scores, log-probs."""
  k = s.finished_scores.shape[1]
  scores = log_probs / length_penalty((s.index + 1).astype(jnp.float32), alpha)
  merged = jnp.concatenate([s.finished_scores, jnp.where(ends, scores, NEG_INF)], 1)
  finished_scores, keep = lax.top_k(merged, k)
  finished_tokens = jnp.take_along_axis(
      jnp.concatenate([s.finished_tokens, tokens], axis=1), keep[:, :, None], axis=1)
  finished_log_probs = jnp.take_along_axis(
      jnp.concatenate([s.finished_log_probs, log_probs], axis=1), keep, axis=1)
  return finished_tokens, finished_scores, finished_log_probs


# Beam search's loop runs in length buckets, FIRST_HORIZON steps and then doubling up to L:
# the step's state (the decoder's slot cache, K slots a step for each sentence) is made for
# the bucket's length, so early steps do not attend over the slots of the whole limit.
FIRST_HORIZON = 64


def horizons(length: int, first: Optional[int] = None) -> list[int]:
  """The static lengths beam search's loop runs in: first, 2·first, ... up to `length`."""
  out = [min(first or FIRST_HORIZON, length)]
  while out[-1] < length:
    out.append(min(2 * out[-1], length))
  return out


def grown(step: Step, state: Any, start: Start) -> Any:
  """A step's `state` carried into the one `step.init(start)` makes for a longer
  `start.length`: each leaf whose shape grew keeps its values at the origin (a step's
  arrays index steps outermost along their length axes, as the slot cache does)."""
  return jax.tree.map(lambda old, new: old if old.shape == new.shape else
                      lax.dynamic_update_slice(new, old.astype(new.dtype), (0,) * old.ndim),
                      state, step.init(start))


@functools.partial(jax.jit, static_argnames=('beam_size', 'length', 'n_best', 'stop_early',
                                             'first_horizon'))
def _beam_search(step: Step, inputs: Array, alpha: Array, max_extra_len: Array,
                 min_len: Array, *, beam_size: int, length: int, n_best: int = 1,
                 stop_early: bool = True, first_horizon: Optional[int] = None) -> Result:
  """Beam search core -> Result of each sentence's `n_best` best finished hypotheses.
  `stop_early` False runs every sentence to its limit (what the stopping rule must not
  change); the loop runs in the buckets of `horizons(length, first_horizon)`."""
  batch, k = inputs.shape[0], beam_size
  limits = _limits(inputs, max_extra_len, length)
  best_alive_penalty = length_penalty(limits.astype(jnp.float32), alpha)

  def body(s: BeamState) -> BeamState:
    previous = lax.dynamic_index_in_dim(s.alive_tokens, jnp.maximum(s.index - 1, 0), axis=2,
                                        keepdims=False)
    previous = jnp.where(s.index > 0, previous, PAD_ID).reshape(batch * k)
    log_probs, step_state = step.log_probs(s.step, previous, s.index)
    at_limit = s.index + 1 >= limits
    row_at_limit = jnp.repeat(at_limit, k)
    log_probs = _ban_early_eos(log_probs, s.index + 1, min_len, row_at_limit)
    top_log_probs, origin, token = _continuations(log_probs, s.alive_log_probs, row_at_limit)
    top_seq = jnp.take_along_axis(s.alive_tokens, origin[:, :, None], axis=1)
    top_seq = lax.dynamic_update_slice(top_seq, token[:, :, None], (0, 0, s.index))
    is_eos = token == EOS_ID
    # Finished: the EOS candidates among the K best (every one of the K best at the
    # limit). EOS ranked below K is dropped, so a beam of 1 makes the greedy choice.
    ends = (is_eos | at_limit[:, None]) & (jnp.arange(2 * k) < k) & ~s.done[:, None]
    finished = _merge_finished(s, top_seq, top_log_probs, ends, alpha)
    # Alive: the K best candidates that did not end in EOS.
    alive_log_probs, keep = lax.top_k(jnp.where(is_eos, NEG_INF, top_log_probs), k)
    alive_tokens = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
    step_state = step.reorder(step_state, jnp.take_along_axis(origin, keep, axis=1))
    # A sentence is done at its length limit, or once the last of the hypotheses returned
    # (the n-th best finished) scores at least what any continuation of an alive one still
    # could: log-probs only fall, and with alpha >= 0 the penalty grows at most to the one
    # at the limit. K finished hypotheses alone do not stop it: an alive one may beat them.
    done = s.done | at_limit
    if stop_early:
      done = done | (finished[1][:, n_best - 1] >= alive_log_probs[:, 0] / best_alive_penalty)
    return BeamState(s.index + 1, alive_tokens, alive_log_probs, *finished, done, step_state)

  buckets = horizons(length, first_horizon)
  first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
  state = BeamState(jnp.zeros((), jnp.int32), jnp.zeros((batch, k, length), jnp.int32),
                    jnp.broadcast_to(first_beam_only, (batch, k)),
                    jnp.zeros((batch, k, length), jnp.int32), jnp.full((batch, k), NEG_INF),
                    jnp.full((batch, k), NEG_INF), jnp.zeros((batch,), bool),
                    step.init(Start(inputs, limits, k, buckets[0])))
  for i, horizon in enumerate(buckets):
    if i:
      state = state.replace(step=grown(step, state.step, Start(inputs, limits, k, horizon)))
    state = lax.while_loop(lambda s, h=horizon: (s.index < h) & ~jnp.all(s.done), body, state)
  return Result(state.finished_tokens[:, :n_best], state.finished_log_probs[:, :n_best])


def beam_search(step: Step, inputs: Array, *, beam_size: int = 4, alpha: float = 0.6,
                n_best: int = 1, max_extra_len: int = 50, max_decode_len: Optional[int] = None,
                min_len: int = 0, mesh: Optional[Mesh] = None) -> Result:
  """Beam search (paper §6.1: beam 4, alpha 0.6, max length = source length + 50) of
  [B, S] source ids -> Result of each sentence's `n_best` (in [1, K]) best finished
  hypotheses, best first (-inf log-probs where fewer finished: a tiny vocabulary).

  The score of an output of n tokens (EOS included) is log p / ((5 + n) / 6) ** alpha.
  Each step ranks the 2K best continuations: those among the K best that end in EOS
  finish (the K best finished are kept), the K best others stay alive. A sentence stops
  at its length limit or once no alive hypothesis can still beat the last one returned:
  its log-prob over the penalty at the length limit is below that one's score. So the
  result is the one this beam would return without stopping early; a beam of 1 is greedy
  decoding. With `mesh`, each device searches for its share of the rows.
  """
  Search(beam_size=beam_size, alpha=alpha, n_best=n_best, max_extra_len=max_extra_len,
         min_len=min_len)  # checks the values
  length = _decode_len(step, inputs, max_extra_len, max_decode_len)
  return devices.run(_beam_search, step, inputs, (alpha, max_extra_len, min_len), mesh,
                     beam_size=beam_size, length=length, n_best=n_best)


def search(step: Step, inputs: Array, options: Search = Search(), *,
           rng: Optional[Array] = None, max_decode_len: Optional[int] = None,
           mesh: Optional[Mesh] = None) -> Result:
  """Decode [B, S] source ids as `options` say: sampling (with `rng`), greedy (beam 1)
  or beam search."""
  common = dict(max_extra_len=options.max_extra_len, max_decode_len=max_decode_len,
                min_len=options.min_len, mesh=mesh)
  if options.sample:
    if rng is None:
      raise ValueError('sampling needs an rng')
    return sample(step, inputs, rng, temperature=options.temperature, top_k=options.top_k,
                  top_p=options.top_p, **common)
  if options.beam_size == 1:
    return greedy(step, inputs, **common)
  return beam_search(step, inputs, beam_size=options.beam_size, alpha=options.alpha,
                     n_best=options.n_best, **common)


def trim(tokens: Any) -> list[list[int]]:
  """[B, L] output ids -> per sentence the ids before the first EOS (or padding)."""
  out = []
  for row in np.asarray(jax.device_get(tokens)).tolist():
    end = next((i for i, t in enumerate(row) if t in (EOS_ID, PAD_ID)), len(row))
    out.append(row[:end])
  return out
