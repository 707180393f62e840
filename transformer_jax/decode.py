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


def _encode(params: Params, config: TransformerConfig, inputs: Array) -> Array:
  """[B, S] source ids -> [B, S, D] encoder states."""
  return Transformer(config).apply({'params': params}, inputs, method=Transformer.encode)


def _decode_step(params: Params, config: TransformerConfig, cache: Any, encoded: Array,
                 inputs: Array, previous: Array) -> tuple[Array, Any]:
  """One cached decoder step: previous token [B·K] -> next-token logits [B·K, V], new cache.

  `encoded` [B, S, D] and `inputs` [B, S] hold one row per sentence (K hypotheses each).
  """
  logits, state = Transformer(config).apply(
      {'params': params, 'cache': cache}, encoded, inputs, previous[:, None],
      use_cache=True, method=Transformer.decode, mutable=['cache'])
  return logits[:, 0], state['cache']


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


def _top_log_probs(logits: Array, k: int, chunk: int = 128) -> tuple[Array, Array]:
  """The k largest log-probabilities of each column of vocabulary-major logits [V, R] and
  their token ids -> [R, k] each, in `lax.top_k`'s order (equal values: lower id first).

  They are among the k chunks of `chunk` entries with the largest maxima: one pass finds
  the chunk maxima (whose maximum is also the logsumexp's shift), then a top-k over
  [R, k·chunk] candidates, instead of XLA:CPU's slow top-k over the whole vocabulary.
  """
  vocab, rows = logits.shape
  if vocab % chunk or vocab // chunk <= k:
    values, index = lax.top_k(logits.T, k)
    return values - jax.nn.logsumexp(logits, axis=0)[:, None], index
  chunks = logits.reshape(vocab // chunk, chunk, rows)
  maxima = jnp.max(chunks, axis=1)  # [V / chunk, R]
  # Ascending chunk ids keep the candidates in vocabulary order, so ties break as in top_k.
  best = jnp.sort(lax.top_k(maxima.T, k)[1], axis=-1)  # [R, k]
  candidates = jnp.take_along_axis(chunks.transpose(2, 0, 1), best[:, :, None],
                                   axis=1).reshape(rows, -1)
  values, position = lax.top_k(candidates, k)
  index = jnp.take_along_axis(best, position // chunk, axis=1) * chunk + position % chunk
  shift = jnp.max(maxima, axis=0)
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)  # as jax.nn.logsumexp
  log_sum = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=0)) + shift
  return values - log_sum[:, None], index


def _length_limits(inputs: Array, max_extra_len: Array, max_decode_len: int) -> Array:
  """[B] per-sentence output length limits: min(non-pad source length + extra, L), >= 1."""
  source_len = jnp.sum(inputs != PAD_ID, axis=-1)
  return jnp.clip(source_len + max_extra_len, 1, max_decode_len).astype(jnp.int32)


def _resolve_max_decode_len(config: TransformerConfig, inputs: Array, max_extra_len: int,
                            max_decode_len: Optional[int]) -> int:
  """Static cache length: S + max_extra_len by default, never beyond the position table."""
  length = inputs.shape[1] + max_extra_len if max_decode_len is None else max_decode_len
  return max(1, min(length, config.max_len))


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


def filter_logits(logits: Array, temperature: Array, top_k: int = 0) -> Array:
  """Sampling logits [..., V]: divided by `temperature`; only the `top_k` largest kept
  (0 or >= V: all)."""
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  return logits


@functools.partial(jax.jit, static_argnames=('config', 'max_decode_len', 'greedy', 'top_k',
                                             'eos_id'))
def _sample_loop(params: Params, config: TransformerConfig, inputs: Array, rng: Array,
                 temperature: Array, max_extra_len: Array, min_len: Array, *,
                 max_decode_len: int, greedy: bool, top_k: int,
                 eos_id: int) -> tuple[Array, Array]:
  """Greedy (argmax) or ancestral sampling; -> tokens [B, L], log-probabilities [B]."""
  batch = inputs.shape[0]
  limits = _length_limits(inputs, max_extra_len, max_decode_len)
  encoded = _encode(params, config, inputs)

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < max_decode_len) & ~jnp.all(done)

  def body(state):
    step, tokens, previous, done, scores, cache = state
    logits, cache = _decode_step(params, config, cache, encoded, inputs, previous)
    logits = _masked_logits(logits, step + 1, min_len, eos_id)
    if greedy:
      token = jnp.argmax(logits, axis=-1)
    else:  # sampling is invariant to the logsumexp shift: no need to normalise first
      key = jax.random.fold_in(rng, step)
      token = jax.random.categorical(key, filter_logits(logits, temperature, top_k))
    token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
    token_log_prob = (jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
                      - jax.nn.logsumexp(logits, axis=-1))
    scores = scores + jnp.where(done, 0.0, token_log_prob)
    tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    done = done | (token == eos_id) | (step + 1 >= limits)
    return step + 1, tokens, token, done, scores, cache

  state = (jnp.zeros((), jnp.int32), jnp.zeros((batch, max_decode_len), jnp.int32),
           jnp.full((batch,), PAD_ID, jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.float32),
           init_cache(config, batch, max_decode_len, inputs.shape[1]))
  _, tokens, _, _, scores, _ = lax.while_loop(cond, body, state)
  return tokens, scores


def greedy_decode(params: Params, config: TransformerConfig, inputs: Array, *,
                  max_extra_len: int = 50, max_decode_len: Optional[int] = None,
                  min_len: int = 0, eos_id: int = EOS_ID,
                  mesh: Optional[Mesh] = None) -> tuple[Array, Array]:
  """Greedy decoding of [B, S] source ids -> (tokens [B, L], sum of log-probs [B]).

  `max_decode_len` (L, static) defaults to S + max_extra_len; `min_len` bans EOS until
  that many tokens precede it; with `mesh`, each device decodes its share of the rows.
  """
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  return _run(_sample_loop, params, config, inputs,
              (jax.random.key(0), 1.0, max_extra_len, min_len), mesh,
              max_decode_len=length, greedy=True, top_k=0, eos_id=eos_id)


def sample(params: Params, config: TransformerConfig, inputs: Array, rng: Array, *,
           temperature: float = 1.0, top_k: int = 0, max_extra_len: int = 50,
           max_decode_len: Optional[int] = None, min_len: int = 0,
           eos_id: int = EOS_ID, mesh: Optional[Mesh] = None) -> tuple[Array, Array]:
  """Ancestral sampling from softmax(logits / temperature), restricted to the `top_k` most
  likely tokens (0: all) -> (tokens [B, L], model log-probs of the sampled tokens [B]).

  Temperature 0 is the limit of sampling: greedy decoding. With `mesh`, each device
  samples its share of the rows, from `rng` folded with its shard index.
  """
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if temperature == 0:
    return greedy_decode(params, config, inputs, max_extra_len=max_extra_len,
                         max_decode_len=max_decode_len, min_len=min_len, eos_id=eos_id,
                         mesh=mesh)
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  return _run(_sample_loop, params, config, inputs,
              (rng, temperature, max_extra_len, min_len), mesh,
              max_decode_len=length, greedy=False, top_k=top_k, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=('config', 'beam_size', 'max_decode_len', 'eos_id'))
def _beam_search(params: Params, config: TransformerConfig, inputs: Array, alpha: Array,
                 max_extra_len: Array, min_len: Array, *, beam_size: int,
                 max_decode_len: int, eos_id: int) -> tuple[Array, Array]:
  """Beam search core; -> best tokens [B, L] and their length-normalised scores [B]."""
  batch, k, length = inputs.shape[0], beam_size, max_decode_len
  limits = _length_limits(inputs, max_extra_len, length)
  # Encode once; the K beams of a sentence (rows b·K .. b·K + K-1 of the decoder) share
  # one copy of its encoder states and cross-attention keys/values.
  encoded = _encode(params, config, inputs)
  best_alive_penalty = length_penalty(limits.astype(jnp.float32), alpha)

  def cond(state):
    step, done = state[0], state[5]
    return (step < length) & ~jnp.all(done)

  def body(state):
    step, alive_seq, alive_log_probs, finished_seq, finished_scores, done, cache = state
    previous = lax.dynamic_index_in_dim(alive_seq, jnp.maximum(step - 1, 0), axis=2,
                                        keepdims=False)
    previous = jnp.where(step > 0, previous, PAD_ID).reshape(batch * k)
    logits, cache = _decode_step(params, config, cache, encoded, inputs, previous)
    # Vocabulary-major [V, B·K]: on CPU the output projection computes the logits in that
    # layout (see `linear.project`), so every pass below reads them without a transpose.
    logits = _masked_logits(logits.T, step + 1, min_len, eos_id, axis=0)
    # The 2K best continuations of a sentence are among the 2K best of each of its
    # hypotheses: rank those (K·2K candidates, not K·V), then normalise only them.
    width = min(2 * k, logits.shape[0])
    beam_log_probs, beam_tokens = _top_log_probs(logits, width)
    candidates = alive_log_probs[:, :, None] + beam_log_probs.reshape(batch, k, width)
    # 2K candidates: at most K of them end in EOS, so K can stay alive.
    top_log_probs, top_index = lax.top_k(candidates.reshape(batch, k * width), 2 * k)
    origin = top_index // width
    token = jnp.take_along_axis(beam_tokens.reshape(batch, k * width), top_index, axis=1)
    top_seq = jnp.take_along_axis(alive_seq, origin[:, :, None], axis=1)
    top_seq = lax.dynamic_update_slice(top_seq, token[:, :, None], (0, 0, step))
    is_eos = token == eos_id
    at_limit = step + 1 >= limits

    # Finished: the EOS candidates among the K best (every one of the K best at the length
    # limit). EOS ranked below K is dropped, so a beam of 1 makes the greedy choice.
    new_scores = top_log_probs / length_penalty((step + 1).astype(jnp.float32), alpha)
    ends = (is_eos | at_limit[:, None]) & (jnp.arange(2 * k) < k) & ~done[:, None]
    merged_scores = jnp.concatenate([finished_scores, jnp.where(ends, new_scores, NEG_INF)], 1)
    merged_seq = jnp.concatenate([finished_seq, top_seq], axis=1)
    finished_scores, keep = lax.top_k(merged_scores, k)
    finished_seq = jnp.take_along_axis(merged_seq, keep[:, :, None], axis=1)

    # Alive: the K best candidates that did not end in EOS.
    alive_log_probs, keep = lax.top_k(jnp.where(is_eos, NEG_INF, top_log_probs), k)
    alive_seq = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
    cache = reorder_beams(cache, jnp.take_along_axis(origin, keep, axis=1))

    # A sentence is done when all K beams have finished, or when its best alive beam cannot
    # beat its best finished one (log-probs only fall, and with alpha >= 0 the penalty
    # grows at most to the one at the limit).
    all_finished = finished_scores[:, -1] > NEG_INF
    cannot_improve = alive_log_probs[:, 0] / best_alive_penalty < finished_scores[:, 0]
    done = done | at_limit | all_finished | cannot_improve
    return step + 1, alive_seq, alive_log_probs, finished_seq, finished_scores, done, cache

  first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
  state = (jnp.zeros((), jnp.int32),
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.broadcast_to(first_beam_only, (batch, k)),
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.full((batch, k), NEG_INF),
           jnp.zeros((batch,), bool),
           init_cache(config, batch, length, inputs.shape[1], beam_size=k))
  _, _, _, finished_seq, finished_scores, _, _ = lax.while_loop(cond, body, state)
  return finished_seq[:, 0], finished_scores[:, 0]


def beam_search(params: Params, config: TransformerConfig, inputs: Array, *,
                beam_size: int = 4, alpha: float = 0.6, max_extra_len: int = 50,
                max_decode_len: Optional[int] = None, min_len: int = 0,
                eos_id: int = EOS_ID, mesh: Optional[Mesh] = None) -> tuple[Array, Array]:
  """Beam search (paper §6.1: beam 4, alpha 0.6, max length = source length + 50).

  [B, S] source ids -> (best tokens [B, L], their scores [B]). The score of a sequence
  of n tokens (EOS included) is log p(y) / ((5 + n) / 6) ** alpha; alpha must be >= 0.
  Each step ranks the 2K best continuations: those among the K best that end in EOS
  finish, the K best others stay alive. A sentence stops once K hypotheses have finished
  or no alive one can beat its best finished one; a beam of 1 is greedy decoding. With
  `mesh`, each device searches for its share of the rows.
  """
  if beam_size < 1:
    raise ValueError(f'beam_size must be >= 1, got {beam_size}')
  length = _resolve_max_decode_len(config, inputs, max_extra_len, max_decode_len)
  return _run(_beam_search, params, config, inputs, (alpha, max_extra_len, min_len), mesh,
              beam_size=beam_size, max_decode_len=length, eos_id=eos_id)


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
