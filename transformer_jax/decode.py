"""Autoregressive decoding over the decoder's KV cache: greedy, sampling, beam search.

Pure JAX: every decoder is one jit-compiled `lax.while_loop` over global arrays, so it
runs unchanged on batches sharded over a device mesh. Given `mesh=`, every strategy
(greedy, beam, sampling) runs per device instead (`jax.shard_map`, compiled programs kept
in a cache of `JIT_CACHE_SIZE`): each device decodes its share of the rows (sentences are
decoded independently), so the devices never wait for each other, and each stops when its
own sentences are done. Shapes: B = batch, S = source
length, K = beam size, L = `max_decode_len` (cache length), V = vocabulary.

Conventions (as in `model.py`): token 0 is padding and the decoder's start symbol and is
never emitted; EOS (default 1) ends a sentence. Outputs are [B, L] ids holding the
sentence, its EOS (if it was emitted) and zeros after it. The length limit of a sentence
is `min(source_length + max_extra_len, L)` where source_length counts its non-pad tokens,
so a sentence's translation depends neither on its padding nor on the rest of the batch.
A sentence that reaches its limit without EOS is returned as is, without EOS.

Ensembles: every decoder takes one model (params, a `TransformerConfig`) or several
(equally long sequences of params and configs; see `as_ensemble`). Each member keeps its
own cache; at every step the members' log-probabilities are averaged (their mean, not
renormalised), so an ensemble's score of a sequence is the mean of its members' scores.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from transformer_jax.model import Transformer, TransformerConfig, init_cache, reorder_beams
from transformer_jax.sharding import BATCH_AXES

Array = jax.Array
Params = Any

PAD_ID = 0
EOS_ID = 1
NEG_INF = float('-inf')
# Per-device programs kept compiled (one per model config, mesh, strategy and length).
JIT_CACHE_SIZE = 32


def _configs(config: Any) -> tuple[TransformerConfig, ...]:
  """A config or a sequence of them (an ensemble's) -> a tuple."""
  return (config,) if isinstance(config, TransformerConfig) else tuple(config)


def as_ensemble(params: Any, config: Any) -> tuple[tuple[Params, ...],
                                                   tuple[TransformerConfig, ...]]:
  """One model (params, a `TransformerConfig`) or an ensemble (equally long sequences of
  params and configs: members may differ in size, not in vocabularies) -> the members'
  params and configs as tuples."""
  if isinstance(config, TransformerConfig):
    return (params,), (config,)
  params, configs = tuple(params), _configs(config)
  if not configs or len(params) != len(configs):
    raise ValueError(f'an ensemble needs one params per config, got {len(params)} params '
                     f'and {len(configs)} configs')
  vocabularies = sorted({(c.vocab_size, c.output_vocab_size) for c in configs})
  if len(vocabularies) > 1:
    raise ValueError('ensemble members must share their vocabularies, got (source, target) '
                     f'sizes {vocabularies}')
  return params, configs


def _encode(params: Any, config: Any, inputs: Array) -> tuple[Array, ...]:
  """[B, S] source ids -> each member's [B, S, D] encoder states."""
  return tuple(Transformer(c).apply({'params': p}, inputs, method=Transformer.encode)
               for p, c in zip(*as_ensemble(params, config)))


def _init_caches(config: Any, batch: int, length: int, source_len: int,
                 beam_size: int = 1) -> tuple[Any, ...]:
  """Each member's zero decoding cache (see `model.init_cache`)."""
  return tuple(init_cache(c, batch, length, source_len, beam_size=beam_size)
               for c in _configs(config))


def _next_scores(params: Any, config: Any, caches: tuple[Any, ...],
                 encoded: tuple[Array, ...], inputs: Array, previous: Array, length: Array,
                 min_len: Array, eos_id: int, axis: int = -1) -> tuple[Array, tuple[Any, ...]]:
  """One cached decoder step of each member: scores of the `length`-th output token after
  `previous` [B·K] -> ([B·K, V], or vocabulary-major [V, B·K] with axis 0; padding and
  early EOS -inf, see `_masked_logits`) and the members' new caches. `encoded` [B, S, D]
  and `inputs` [B, S] hold one row per sentence (K hypotheses each).

  One model: its logits, i.e. its log-probabilities up to each row's logsumexp, which the
  caller subtracts. An ensemble (`len(_configs(config)) > 1`): the mean of the members'
  log-probabilities, not renormalised.
  """
  scores, new_caches = [], []
  for p, c, cache, enc in zip(*as_ensemble(params, config), caches, encoded):
    logits, state = Transformer(c).apply(
        {'params': p, 'cache': cache}, enc, inputs, previous[:, None], use_cache=True,
        method=Transformer.decode, mutable=['cache'])
    logits = logits[:, 0].T if axis == 0 else logits[:, 0]
    scores.append(_masked_logits(logits, length, min_len, eos_id, axis))
    new_caches.append(state['cache'])
  if len(scores) == 1:
    return scores[0], tuple(new_caches)
  log_probs = [x - jax.nn.logsumexp(x, axis=axis, keepdims=True) for x in scores]
  return jnp.mean(jnp.stack(log_probs), axis=0), tuple(new_caches)


def _masked_logits(logits: Array, length: Array, min_len: Array, eos_id: int,
                   axis: int = -1) -> Array:
  """Logits (vocabulary along `axis`) for the `length`-th output token with padding banned
  (-inf), and EOS banned until `min_len` tokens precede it. Log-probabilities are these
  minus their logsumexp. Only the two entries are written (in place), not a whole copy."""
  axis = axis % logits.ndim
  pad = lax.index_in_dim(logits, PAD_ID, axis)
  logits = lax.dynamic_update_index_in_dim(logits, jnp.full_like(pad, NEG_INF), PAD_ID, axis)
  eos = lax.index_in_dim(logits, eos_id, axis)
  return lax.dynamic_update_index_in_dim(logits, jnp.where(length <= min_len, NEG_INF, eos),
                                         eos_id, axis)


def _top_log_probs(logits: Array, k: int, chunk: int = 128,
                   normalise: bool = True) -> tuple[Array, Array]:
  """The k largest log-probabilities of each column of vocabulary-major logits [V, R] and
  their token ids -> [R, k] each, in `lax.top_k`'s order (equal values: lower id first).
  `normalise` False: the columns are log-probabilities already (their k largest values).

  They are among the k chunks of `chunk` entries with the largest maxima: one pass finds
  the chunk maxima (whose maximum is also the logsumexp's shift), then a top-k over
  [R, k·chunk] candidates, instead of XLA:CPU's slow top-k over the whole vocabulary.
  """
  vocab, rows = logits.shape
  if vocab % chunk or vocab // chunk <= k:
    values, index = lax.top_k(logits.T, k)
    if not normalise:
      return values, index
    return values - jax.nn.logsumexp(logits, axis=0)[:, None], index
  chunks = logits.reshape(vocab // chunk, chunk, rows)
  maxima = jnp.max(chunks, axis=1)  # [V / chunk, R]
  # Ascending chunk ids keep the candidates in vocabulary order, so ties break as in top_k.
  best = jnp.sort(lax.top_k(maxima.T, k)[1], axis=-1)  # [R, k]
  candidates = jnp.take_along_axis(chunks.transpose(2, 0, 1), best[:, :, None],
                                   axis=1).reshape(rows, -1)
  values, position = lax.top_k(candidates, k)
  index = jnp.take_along_axis(best, position // chunk, axis=1) * chunk + position % chunk
  if not normalise:
    return values, index
  shift = jnp.max(maxima, axis=0)
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)  # as jax.nn.logsumexp
  log_sum = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=0)) + shift
  return values - log_sum[:, None], index


def _length_limits(inputs: Array, max_extra_len: Array, max_decode_len: int) -> Array:
  """[B] per-sentence output length limits: min(non-pad source length + extra, L), >= 1."""
  source_len = jnp.sum(inputs != PAD_ID, axis=-1)
  return jnp.clip(source_len + max_extra_len, 1, max_decode_len).astype(jnp.int32)


def _resolve_max_decode_len(config: Any, inputs: Array, max_extra_len: int,
                            max_decode_len: Optional[int]) -> int:
  """Static cache length: S + max_extra_len by default, never beyond a position table."""
  length = inputs.shape[1] + max_extra_len if max_decode_len is None else max_decode_len
  return max(1, min(length, *(c.max_len for c in _configs(config))))


def _batch_axes(mesh: Optional[Mesh]) -> tuple[str, ...]:
  """The mesh axes a batch's rows are split over (`sharding.BATCH_AXES` the mesh has)."""
  return () if mesh is None else tuple(a for a in BATCH_AXES if a in mesh.axis_names)


@functools.lru_cache(maxsize=JIT_CACHE_SIZE)
def _per_device(core: Any, config: TransformerConfig, mesh: Mesh, axes: tuple[str, ...],
                num_args: int, static: tuple[tuple[str, Any], ...]) -> Any:
  """core(params, config, inputs, *args, **static) run by each device on its own rows
  (rows split over `axes`); a PRNG-key argument is made distinct per device.

  Without replication checks (`check_vma`): core is written for global arrays, and its
  loop state starts equal on all devices and then differs, which is the point here."""
  def local(params, inputs, *args):
    shard = lax.axis_index(axes)
    args = [jax.random.fold_in(a, shard)
            if jax.dtypes.issubdtype(getattr(a, 'dtype', None), jax.dtypes.prng_key) else a
            for a in args]
    return core(params, config, inputs, *args, **dict(static))
  rows = P(axes)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), rows) + (P(),) * num_args,
                               out_specs=rows, check_vma=False))


def _run(core: Any, params: Params, config: TransformerConfig, inputs: Array,
         args: tuple[Any, ...], mesh: Optional[Mesh], **static: Any) -> Any:
  """core(params, config, inputs, *args, **static): one global program, or with `mesh`
  each device decoding its share of the rows (core must decode its rows independently;
  its outputs are [B, ...]). Rows are padded to a multiple of the shards and cut after."""
  axes = _batch_axes(mesh)
  if not axes:
    return core(params, config, inputs, *args, **static)
  shards, batch = int(np.prod([mesh.shape[a] for a in axes])), inputs.shape[0]
  if batch % shards:
    inputs = jnp.pad(inputs, ((0, shards - batch % shards), (0, 0)))
  outputs = _per_device(core, config, mesh, axes, len(args), tuple(sorted(static.items())))(
      params, inputs, *args)
  return jax.tree.map(lambda x: x[:batch], outputs)


def length_penalty(length: Array, alpha: Array) -> Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
  return ((5.0 + length) / 6.0) ** alpha


def filter_logits(logits: Array, temperature: Array, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """Sampling logits [..., V]: divided by `temperature`; only the `top_k` largest kept
  (0 or >= V: all); of those, only the nucleus (Holtzman et al. 2020): the most likely
  tokens that the probability mass of the more likely ones leaves under `top_p` (1: all;
  the most likely token always stays). Dropped tokens get -inf."""
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1:
    ordered = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    kept = jnp.cumsum(probs, axis=-1) - probs < top_p
    cutoff = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_len', 'greedy', 'top_k',
                                             'top_p', 'eos_id'))
def _sample_loop(params: Any, config: Any, inputs: Array, rng: Array, temperature: Array,
                 max_extra_len: Array, min_len: Array, *, max_decode_len: int, greedy: bool,
                 top_k: int, eos_id: int, top_p: float = 1.0) -> tuple[Array, Array]:
  """Greedy (argmax) or ancestral sampling; -> tokens [B, L], log-probabilities [B]."""
  batch = inputs.shape[0]
  limits = _length_limits(inputs, max_extra_len, max_decode_len)
  encoded = _encode(params, config, inputs)

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < max_decode_len) & ~jnp.all(done)

  def body(state):
    step, tokens, previous, done, scores, caches = state
    logits, caches = _next_scores(params, config, caches, encoded, inputs, previous, step + 1,
                                  min_len, eos_id)
    if greedy:
      token = jnp.argmax(logits, axis=-1)
    else:  # sampling is invariant to the logsumexp shift: no need to normalise first
      key = jax.random.fold_in(rng, step)
      token = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p))
    token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
    token_log_prob = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
    if len(_configs(config)) == 1:  # logits: normalise
      token_log_prob = token_log_prob - jax.nn.logsumexp(logits, axis=-1)
    scores = scores + jnp.where(done, 0.0, token_log_prob)
    tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    done = done | (token == eos_id) | (step + 1 >= limits)
    return step + 1, tokens, token, done, scores, caches

  state = (jnp.zeros((), jnp.int32), jnp.zeros((batch, max_decode_len), jnp.int32),
           jnp.full((batch,), PAD_ID, jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.float32),
           _init_caches(config, batch, max_decode_len, inputs.shape[1]))
  _, tokens, _, _, scores, _ = lax.while_loop(cond, body, state)
  return tokens, scores


def greedy_decode(params: Any, config: Any, inputs: Array, *, max_extra_len: int = 50,
                  max_decode_len: Optional[int] = None, min_len: int = 0,
                  eos_id: int = EOS_ID, mesh: Optional[Mesh] = None) -> tuple[Array, Array]:
  """Greedy decoding of [B, S] source ids -> (tokens [B, L], sum of log-probs [B]).

  `max_decode_len` (L, static) defaults to S + max_extra_len; `min_len` bans EOS until
  that many tokens precede it; with `mesh`, each device decodes its share of the rows.
  One model or an ensemble (see `as_ensemble`).
  """
  params, config = as_ensemble(params, config)
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  return _run(_sample_loop, params, config, inputs,
              (jax.random.key(0), 1.0, max_extra_len, min_len), mesh,
              max_decode_len=length, greedy=True, top_k=0, eos_id=eos_id)


def sample(params: Any, config: Any, inputs: Array, rng: Array, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, max_extra_len: int = 50,
           max_decode_len: Optional[int] = None, min_len: int = 0,
           eos_id: int = EOS_ID, mesh: Optional[Mesh] = None) -> tuple[Array, Array]:
  """Ancestral sampling from softmax(logits / temperature), restricted to the `top_k` most
  likely tokens (0: all) and to their nucleus of mass `top_p` (1: all; see
  `filter_logits`) -> (tokens [B, L], model log-probs of the sampled tokens [B]). The same
  `rng` gives the same samples.

  Temperature 0 is the limit of sampling: greedy decoding. With `mesh`, each device
  samples its share of the rows, from `rng` folded with its shard index.
  """
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')
  if temperature == 0:
    return greedy_decode(params, config, inputs, max_extra_len=max_extra_len,
                         max_decode_len=max_decode_len, min_len=min_len, eos_id=eos_id,
                         mesh=mesh)
  params, config = as_ensemble(params, config)
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  return _run(_sample_loop, params, config, inputs,
              (rng, temperature, max_extra_len, min_len), mesh,
              max_decode_len=length, greedy=False, top_k=top_k, top_p=float(top_p),
              eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=('config', 'beam_size', 'max_decode_len', 'eos_id',
                                             'n_best', 'stop_early'))
def _beam_search(params: Any, config: Any, inputs: Array, alpha: Array, max_extra_len: Array,
                 min_len: Array, *, beam_size: int, max_decode_len: int, eos_id: int,
                 n_best: int = 1, stop_early: bool = True) -> tuple[Array, Array, Array]:
  """Beam search core -> each sentence's `n_best` best finished hypotheses, best first:
  tokens [B, n, L], length-normalised scores [B, n], log-probabilities [B, n].
  `stop_early` False runs every sentence to its length limit (what the stopping rule
  must not change)."""
  batch, k, length = inputs.shape[0], beam_size, max_decode_len
  limits = _length_limits(inputs, max_extra_len, length)
  # Encode once; the K beams of a sentence (rows b·K .. b·K + K-1 of the decoder) share
  # one copy of its encoder states and cross-attention keys/values.
  encoded = _encode(params, config, inputs)
  best_alive_penalty = length_penalty(limits.astype(jnp.float32), alpha)

  def cond(state):
    step, done = state[0], state[-2]
    return (step < length) & ~jnp.all(done)

  def body(state):
    (step, alive_seq, alive_log_probs, finished_seq, finished_scores, finished_log_probs,
     done, caches) = state
    previous = lax.dynamic_index_in_dim(alive_seq, jnp.maximum(step - 1, 0), axis=2,
                                        keepdims=False)
    previous = jnp.where(step > 0, previous, PAD_ID).reshape(batch * k)
    # Vocabulary-major [V, B·K]: on CPU the output projection computes the logits in that
    # layout (see `linear.project`), so every pass below reads them without a transpose.
    logits, caches = _next_scores(params, config, caches, encoded, inputs, previous, step + 1,
                                  min_len, eos_id, axis=0)
    # The 2K best continuations of a sentence are among the 2K best of each of its
    # hypotheses: rank those (K·2K candidates, not K·V), then normalise only them.
    width = min(2 * k, logits.shape[0])
    beam_log_probs, beam_tokens = _top_log_probs(logits, width,
                                                 normalise=len(_configs(config)) == 1)
    candidates = alive_log_probs[:, :, None] + beam_log_probs.reshape(batch, k, width)
    # 2K candidates: at most K of them end in EOS, so K can stay alive.
    top_log_probs, top_index = lax.top_k(candidates.reshape(batch, k * width), 2 * k)
    origin = top_index // width
    token = jnp.take_along_axis(beam_tokens.reshape(batch, k * width), top_index, axis=1)
    top_seq = jnp.take_along_axis(alive_seq, origin[:, :, None], axis=1)
    top_seq = lax.dynamic_update_slice(top_seq, token[:, :, None], (0, 0, step))
    is_eos = token == eos_id
    at_limit = step + 1 >= limits

    # Finished: the K best of those so far and the EOS candidates among the K best (every
    # one of the K best at the length limit). EOS ranked below K is dropped, so a beam of 1
    # makes the greedy choice.
    new_scores = top_log_probs / length_penalty((step + 1).astype(jnp.float32), alpha)
    ends = (is_eos | at_limit[:, None]) & (jnp.arange(2 * k) < k) & ~done[:, None]
    merged_scores = jnp.concatenate([finished_scores, jnp.where(ends, new_scores, NEG_INF)], 1)
    finished_scores, keep = lax.top_k(merged_scores, k)
    finished_seq = jnp.take_along_axis(jnp.concatenate([finished_seq, top_seq], axis=1),
                                       keep[:, :, None], axis=1)
    finished_log_probs = jnp.take_along_axis(
        jnp.concatenate([finished_log_probs, top_log_probs], axis=1), keep, axis=1)

    # Alive: the K best candidates that did not end in EOS.
    alive_log_probs, keep = lax.top_k(jnp.where(is_eos, NEG_INF, top_log_probs), k)
    alive_seq = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
    beams = jnp.take_along_axis(origin, keep, axis=1)
    caches = tuple(reorder_beams(cache, beams) for cache in caches)

    # A sentence is done at its length limit, or once the last of the hypotheses returned
    # (the n-th best finished) scores at least what any continuation of an alive one still
    # could: log-probs only fall, and with alpha >= 0 the penalty grows at most to the one
    # at the limit. K finished hypotheses alone do not stop it: an alive one may beat them.
    done = done | at_limit
    if stop_early:
      bound = alive_log_probs[:, 0] / best_alive_penalty
      done = done | (finished_scores[:, n_best - 1] >= bound)
    return (step + 1, alive_seq, alive_log_probs, finished_seq, finished_scores,
            finished_log_probs, done, caches)

  first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
  state = (jnp.zeros((), jnp.int32),
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.broadcast_to(first_beam_only, (batch, k)),
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.full((batch, k), NEG_INF),
           jnp.full((batch, k), NEG_INF),
           jnp.zeros((batch,), bool),
           _init_caches(config, batch, length, inputs.shape[1], beam_size=k))
  _, _, _, finished_seq, finished_scores, finished_log_probs, _, _ = lax.while_loop(
      cond, body, state)
  return (finished_seq[:, :n_best], finished_scores[:, :n_best],
          finished_log_probs[:, :n_best])


def beam_search(params: Any, config: Any, inputs: Array, *, beam_size: int = 4,
                alpha: float = 0.6, max_extra_len: int = 50,
                max_decode_len: Optional[int] = None, min_len: int = 0, eos_id: int = EOS_ID,
                n_best: Optional[int] = None, mesh: Optional[Mesh] = None) -> tuple[Array, ...]:
  """Beam search (paper §6.1: beam 4, alpha 0.6, max length = source length + 50).

  [B, S] source ids -> (best tokens [B, L], their scores [B]). The score of a sequence
  of n tokens (EOS included) is log p(y) / ((5 + n) / 6) ** alpha; alpha must be >= 0.
  `n_best` = n in [1, K]: each sentence's n best finished hypotheses, best first ->
  (tokens [B, n, L], scores [B, n], log-probabilities [B, n]); where fewer than n could
  finish (a tiny vocabulary), the rest score -inf. One model or an ensemble (see
  `as_ensemble`).

  Each step ranks the 2K best continuations: those among the K best that end in EOS
  finish (the K best finished are kept), the K best others stay alive. A sentence stops
  at its length limit or once no alive hypothesis can still beat the last one returned
  (the best, or the n-th best finished): its log-prob over the penalty at the length
  limit is below that one's score. So the result is the one this beam would return
  without stopping early; a beam of 1 is greedy decoding. With `mesh`, each device
  searches for its share of the rows.
  """
  if beam_size < 1:
    raise ValueError(f'beam_size must be >= 1, got {beam_size}')
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0, got {alpha}')
  if n_best is not None and not 1 <= n_best <= beam_size:
    raise ValueError(f'n_best must be in [1, beam_size={beam_size}], got {n_best}')
  params, config = as_ensemble(params, config)
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  tokens, scores, log_probs = _run(
      _beam_search, params, config, inputs, (alpha, max_extra_len, min_len), mesh,
      beam_size=beam_size, max_decode_len=length, eos_id=eos_id, n_best=n_best or 1)
  return (tokens[:, 0], scores[:, 0]) if n_best is None else (tokens, scores, log_probs)


def translate_batch(params: Params, config: TransformerConfig, inputs: Array, *,
                    beam_size: int = 4, alpha: float = 0.6, max_extra_len: int = 50,
                    max_decode_len: Optional[int] = None, mesh: Optional[Mesh] = None) -> Array:
  """Translate [B, S] source ids -> [B, L] output ids: beam search, or greedy if beam_size 1
  (per device with `mesh`)."""
  if beam_size == 1:
    return greedy_decode(params, config, inputs, max_extra_len=max_extra_len,
                         max_decode_len=max_decode_len, mesh=mesh)[0]
  return beam_search(params, config, inputs, beam_size=beam_size, alpha=alpha,
                     max_extra_len=max_extra_len, max_decode_len=max_decode_len, mesh=mesh)[0]


def trim(tokens: Any, eos_id: int = EOS_ID) -> list[list[int]]:
  """[B, L] output ids -> per sentence the ids before the first EOS (or padding)."""
  out = []
  for row in np.asarray(jax.device_get(tokens)).tolist():
    end = next((i for i, t in enumerate(row) if t in (eos_id, PAD_ID)), len(row))
    out.append(row[:end])
  return out
