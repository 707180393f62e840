"""What a search decodes with: steps from a carried state to the next token's log-probs.

A `Step` is three pure functions over a state it defines (any pytree):

  * `init(start)`: the state for `start.inputs` [B, S], G = `start.hypotheses` rows per
    sentence (row b·G + g is hypothesis g of sentence b), outputs of at most
    `start.length` tokens (beam search grows it bucket by bucket: arrays sized by the
    length index steps outermost, so a longer state holds a shorter one at its origin,
    `searches.grown`);
  * `log_probs(state, previous, index)`: previous [B·G] (the token chosen last, PAD_ID at
    index 0) -> (log-probabilities [B·G, V] of token number `index`, new state);
  * `reorder(state, origin)`: after beam search's selection, hypothesis g of sentence b
    continues hypothesis origin[b, g] ([B, G] ints in [0, G)).

`Model` (one Transformer, its cached decoder step), `Ensemble` (the mean of its members'
log-probabilities) and `Constrained` (a step whose tokens are restricted by a
`Constraint`: a mask of allowed tokens computed from a state it carries per hypothesis)
are steps; a search never sees params or configs. `Model` and `Ensemble` are also what
scoring reads (`token_log_probs`, teacher-forced): `model_or_ensemble(params, config)`
makes one from a model's params and config or an ensemble's sequences of them.

Log-probabilities are normalised over the vocabulary less padding (token 0, the decoder's
start symbol, is never a candidate). A constraint masks tokens to -inf without
renormalising: a constrained output scores what the model gives it, as scoring computes.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

import jax
import jax.numpy as jnp
from flax import struct

from transformer_jax.model import Transformer, init_cache, reorder_beams
from transformer_jax.model_config import PAD_ID, TransformerConfig

Array = jax.Array
NEG_INF = float('-inf')


@struct.dataclass
class Start:
  """What a step's state is made for: `inputs` [B, S] source ids (0-padded); `limits` [B]
  each sentence's output length limit in tokens (EOS included); `hypotheses` G rows per
  sentence; `length` L, the longest output (static)."""
  inputs: Array
  limits: Array
  hypotheses: int = struct.field(pytree_node=False)
  length: int = struct.field(pytree_node=False)


class Step(Protocol):
  """A decoding step (see the module's docstring); `max_len`: the longest source or
  output it has positions for (None: no limit of its own)."""
  max_len: Any

  def init(self, start: Start) -> Any: ...

  def log_probs(self, state: Any, previous: Array, index: Array) -> tuple[Array, Any]: ...

  def reorder(self, state: Any, origin: Array) -> Any: ...


def reorder_rows(state: Any, origin: Array) -> Any:
  """Reorder a state whose leaves have hypotheses as rows ([B·G, ...]): row b·G + g takes
  row b·G + origin[b, g]."""
  sentences, groups = origin.shape
  rows = (origin + groups * jnp.arange(sentences)[:, None]).reshape(-1)
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), state)


@struct.dataclass
class Model:
  """One Transformer: `params` and its `TransformerConfig` (static)."""
  params: Any
  config: TransformerConfig = struct.field(pytree_node=False)

  @property
  def max_len(self) -> int:
    return self.config.max_len

  @property
  def models(self) -> tuple[Model, ...]:
    """The models it is made of (itself)."""
    return (self,)

  def _apply(self, *args: Any, **kwargs: Any) -> Any:
    return Transformer(self.config).apply({'params': self.params}, *args, **kwargs)

  def init(self, start: Start) -> dict[str, Any]:
    """Encoder states, source ids and the zero decoding cache (`model.init_cache`)."""
    batch, source_len = start.inputs.shape
    return {'encoded': self._apply(start.inputs, method=Transformer.encode),
            'inputs': start.inputs,
            'cache': init_cache(self.config, batch, start.length, source_len,
                                beam_size=start.hypotheses)}

  def log_probs(self, state: dict[str, Any], previous: Array, index: Array
           ) -> tuple[Array, dict[str, Any]]:
    del index  # the cache counts the steps
    logits, variables = Transformer(self.config).apply(
        {'params': self.params, 'cache': state['cache']}, state['encoded'], state['inputs'],
        previous[:, None], use_cache=True, method=Transformer.decode, mutable=['cache'])
    return log_softmax(logits[:, 0]), {**state, 'cache': variables['cache']}

  def reorder(self, state: dict[str, Any], origin: Array) -> dict[str, Any]:
    return {**state, 'cache': reorder_beams(state['cache'], origin)}

  def token_log_probs(self, inputs: Array, targets: Array) -> Array:
    """Teacher-forced [B, T] log-probability of each target token (any value at padding)
    for [B, S] sources and [B, T] targets, as decoding computes it."""
    logits = self._apply(inputs, targets)
    return jnp.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]


def log_softmax(logits: Array) -> Array:
  """Log-probabilities over the last axis with padding (id 0) never a candidate."""
  return jax.nn.log_softmax(logits.at[..., PAD_ID].set(NEG_INF), axis=-1)


@struct.dataclass
class Ensemble:
  """Several models sharing one vocabulary (they may differ in size): at every step the
  mean of their log-probabilities, not renormalised, so the ensemble's score of an output
  is the mean of its members' scores."""
  members: tuple[Model, ...]

  def __post_init__(self):
    if not self.members:
      raise ValueError('an ensemble needs at least one model')
    sizes = sorted({(m.config.vocab_size, m.config.output_vocab_size) for m in self.members})
    if len(sizes) > 1:
      raise ValueError('ensemble members must share their vocabularies, got (source, '
                       f'target) sizes {sizes}')

  @property
  def max_len(self) -> int:
    return min(m.max_len for m in self.members)

  @property
  def models(self) -> tuple[Model, ...]:
    return self.members

  def init(self, start: Start) -> tuple[Any, ...]:
    return tuple(m.init(start) for m in self.members)

  def log_probs(self, state: tuple[Any, ...], previous: Array, index: Array
           ) -> tuple[Array, tuple[Any, ...]]:
    outputs = [m.log_probs(s, previous, index) for m, s in zip(self.members, state)]
    return (jnp.mean(jnp.stack([log_probs for log_probs, _ in outputs]), axis=0),
            tuple(s for _, s in outputs))

  def reorder(self, state: tuple[Any, ...], origin: Array) -> tuple[Any, ...]:
    return tuple(m.reorder(s, origin) for m, s in zip(self.members, state))

  def token_log_probs(self, inputs: Array, targets: Array) -> Array:
    return jnp.mean(jnp.stack([m.token_log_probs(inputs, targets) for m in self.members]),
                    axis=0)


ModelOrEnsemble = Union[Model, Ensemble]


def model_or_ensemble(params: Any, config: Union[TransformerConfig, Sequence[TransformerConfig]]
            ) -> ModelOrEnsemble:
  """A `Model` of params and a `TransformerConfig`, or an `Ensemble` of equally long
  sequences of params and configs (ValueError otherwise)."""
  if isinstance(config, TransformerConfig):
    return Model(params, config)
  params, configs = tuple(params), tuple(config)
  if len(params) != len(configs):
    raise ValueError(f'an ensemble needs one params per config, got {len(params)} params '
                     f'and {len(configs)} configs')
  return Ensemble(tuple(Model(p, c) for p, c in zip(params, configs)))


class Constraint(Protocol):
  """Which tokens a hypothesis may take next, from a state it carries: `init(start)` ->
  the state, its leaves [B·G, ...] (one row per hypothesis); `update(state, token)` after
  each token [B·G]; `allowed(state)` -> [B·G, V] bool. Beam search reorders the rows."""

  def init(self, start: Start) -> Any: ...

  def update(self, state: Any, token: Array) -> Any: ...

  def allowed(self, state: Any) -> Array: ...


@struct.dataclass
class Constrained:
  """`inner`'s log-probabilities with the tokens `constraint` disallows set to -inf."""
  inner: Any
  constraint: Any

  @property
  def max_len(self) -> Any:
    return self.inner.max_len

  def init(self, start: Start) -> tuple[Any, Any]:
    return self.inner.init(start), self.constraint.init(start)

  def log_probs(self, state: tuple[Any, Any], previous: Array, index: Array
           ) -> tuple[Array, tuple[Any, Any]]:
    inner, rule = state
    updated = self.constraint.update(rule, previous)
    rule = jax.tree.map(lambda new, old: jnp.where(index > 0, new, old), updated, rule)
    log_probs, inner = self.inner.log_probs(inner, previous, index)
    return jnp.where(self.constraint.allowed(rule), log_probs, NEG_INF), (inner, rule)

  def reorder(self, state: tuple[Any, Any], origin: Array) -> tuple[Any, Any]:
    inner, rule = state
    return self.inner.reorder(inner, origin), reorder_rows(rule, origin)
