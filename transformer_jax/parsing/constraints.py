"""Trees well-formed by construction: the tree automaton as a `decoding.Constraint`.

`TreeConstraint` follows each hypothesis's output as a pushdown automaton over the token
kinds of a `symbols.TokenTable` and allows only tokens that keep it a prefix of a tree
over exactly the source's words that can still end within the sentence's length limit:

  * a word slot only while words remain, one per source word; for the 'words'
    linearisation the word is the source's own pieces, forced in order once begun;
  * a close only for an open constituent that already holds a word, with its label;
  * an open only while a word remains (to fill it), at most `max_depth` deep,
    `max_run` in a row and `max_same` of one label in a row, and only if the rest still
    fits: with b tokens left (EOS included), w word tokens to place and d constituents
    open, an open needs b >= w + d + 3 (itself, its close, then the rest and EOS);
  * EOS only once every word is placed and every bracket closed.

Every state it allows can finish (all words placed, brackets closed, EOS) within the
limit, so the search's forced EOS never cuts a tree, and a constrained output is a tree
over the source's words with no repair. State per hypothesis (rows [R] = [B·G]): the
source ids, the word tokens to place, a cursor, the depth, the stack of open labels and
whether each holds a word, opens in a row and tokens left. Pure JAX, jit-compiled inside
the search's loop; the table's arrays are leaves (traced), the bounds static.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from transformer_jax import decoding
from transformer_jax.decoding import Start
from transformer_jax.model_config import EOS_ID, PAD_ID
from transformer_jax.parsing import symbols

Array = jax.Array
# The train trees nest 26 deep and open at most 7 brackets in a row, of one label at most
# 6 (3 or fewer for 99.94% of their opens).
MAX_DEPTH = 40
MAX_RUN = 8
MAX_SAME = 3


@struct.dataclass
class TreeState:
  """The automaton's state, one row per hypothesis."""
  source: Array     # [R, S] source ids (EOS, then padding)
  total: Array      # [R] word tokens to place: source words ('xx', 'tags') or pieces
  cursor: Array     # [R] word tokens placed
  depth: Array      # [R] open constituents
  labels: Array     # [R, D] label index of each open constituent, outermost first
  filled: Array     # [R, D] whether it holds a word yet
  run: Array        # [R] opens since the last word or close
  same: Array       # [R] of those, the last ones of the last one's label
  budget: Array     # [R] tokens left, the next one and EOS included


@struct.dataclass
class TreeConstraint:
  """The tree automaton over a `symbols.TokenTable`'s arrays (see the module docstring)."""
  kinds: Array        # [V] int8
  label_ids: Array    # [V] int32
  starts_word: Array  # [V] bool
  copies_words: bool = struct.field(pytree_node=False)
  max_depth: int = struct.field(pytree_node=False, default=MAX_DEPTH)
  max_run: int = struct.field(pytree_node=False, default=MAX_RUN)
  max_same: int = struct.field(pytree_node=False, default=MAX_SAME)

  @classmethod
  def of(cls, table: symbols.TokenTable, max_depth: int = MAX_DEPTH, max_run: int = MAX_RUN,
         max_same: int = MAX_SAME) -> 'TreeConstraint':
    """The automaton of a vocabulary's token table."""
    return cls(jnp.asarray(table.kinds, jnp.int32), jnp.asarray(table.label_ids),
               jnp.asarray(table.starts_word), table.copies_words, max_depth, max_run,
               max_same)

  def _starts(self, source: Array) -> Array:
    """[..., S] whether each source position begins a word (the first always does)."""
    first = jnp.arange(source.shape[-1]) == 0
    return (self.starts_word[source] | first) & (source != PAD_ID) & (source != EOS_ID)

  def init(self, start: Start) -> TreeState:
    rows = start.inputs.shape[0] * start.hypotheses
    source = jnp.repeat(start.inputs, start.hypotheses, axis=0)
    pieces = jnp.sum((source != PAD_ID) & (source != EOS_ID), axis=-1)
    total = pieces if self.copies_words else jnp.sum(self._starts(source), axis=-1)
    zeros = jnp.zeros((rows,), jnp.int32)
    return TreeState(source, total.astype(jnp.int32), zeros, zeros,
                     jnp.zeros((rows, self.max_depth), jnp.int32),
                     jnp.zeros((rows, self.max_depth), bool), zeros, zeros,
                     jnp.repeat(start.limits, start.hypotheses).astype(jnp.int32))

  def _next_piece(self, state: TreeState) -> tuple[Array, Array]:
    """([R] the source piece at the cursor, [R] whether it continues a begun word)."""
    index = jnp.minimum(state.cursor, state.source.shape[1] - 1)
    piece = jnp.take_along_axis(state.source, index[:, None], axis=1)[:, 0]
    continues = (state.cursor > 0) & (state.cursor < state.total) & ~self.starts_word[piece]
    return piece, continues

  def _top(self, state: TreeState, values: Array) -> Array:
    """[R] the innermost open constituent's entry of [R, D] `values` (any at depth 0)."""
    index = jnp.clip(state.depth - 1, 0, self.max_depth - 1)
    return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]

  def update(self, state: TreeState, token: Array) -> TreeState:
    kind, label = self.kinds[token], self.label_ids[token]
    opened, closed = kind == symbols.OPEN, kind == symbols.CLOSE
    if self.copies_words:
      placed = ~opened & ~closed & (token == self._next_piece(state)[0])
    else:
      placed = kind == symbols.SLOT
    placed &= state.cursor < state.total
    level = jnp.arange(self.max_depth)[None]
    depth = state.depth[:, None]
    labels = jnp.where(opened[:, None] & (level == depth), label[:, None], state.labels)
    filled = state.filled & ~(opened[:, None] & (level == depth))
    filled |= (placed[:, None] & (level == depth - 1)) | (closed[:, None] & (level == depth - 2))
    repeated = (state.run > 0) & (label == self._top(state, state.labels))
    same = jnp.where(opened, jnp.where(repeated, state.same + 1, 1), 0)
    return TreeState(state.source, state.total, state.cursor + placed,
                     state.depth + opened - closed, labels, filled,
                     jnp.where(opened, state.run + 1, 0), same, state.budget - 1)

  def allowed(self, state: TreeState) -> Array:
    remaining = state.total - state.cursor
    if self.copies_words:
      piece, continues = self._next_piece(state)
    else:
      continues = jnp.zeros_like(remaining, bool)
    free = ~continues
    can_open = (free & (remaining > 0) & (state.depth < self.max_depth)
                & (state.run < self.max_run) & (state.budget >= remaining + state.depth + 3))
    can_close = free & (state.depth > 0) & self._top(state, state.filled)
    can_place = remaining > 0
    kinds, label_ids = self.kinds[None], self.label_ids[None]
    close_label = (label_ids == self._top(state, state.labels)[:, None]) | (label_ids < 0)
    repeats = ((label_ids == self._top(state, state.labels)[:, None])
               & (state.same >= self.max_same)[:, None])
    allowed = (((kinds == symbols.OPEN) & can_open[:, None] & ~repeats)
               | ((kinds == symbols.CLOSE) & can_close[:, None] & close_label))
    if self.copies_words:
      vocab = jnp.arange(kinds.shape[1])[None]
      allowed = jnp.where(continues[:, None], False, allowed)
      allowed |= (vocab == piece[:, None]) & can_place[:, None]
    else:
      allowed |= (kinds == symbols.SLOT) & can_place[:, None]
    finished = (remaining == 0) & (state.depth == 0)
    return allowed.at[:, EOS_ID].set(finished)


@struct.dataclass
class WordsAsOne:
  """A 'words' parser's step in which placing the next word is one action: every word
  piece (SLOT or PIECE) gets the log-probability that *a* word comes next, the
  log-sum-exp of theirs. Under `TreeConstraint` only the source's next piece survives, so
  a hypothesis chooses between brackets and "the next word" (as an 'xx' parser chooses
  `XX`): a model unsure *which* word comes next still places it instead of opening
  brackets. Not normalised without the automaton; the state is `inner`'s."""
  inner: Any
  words: Array  # [V] bool

  @property
  def max_len(self) -> Any:
    return self.inner.max_len

  def init(self, start: Start) -> Any:
    return self.inner.init(start)

  def log_probs(self, state: Any, previous: Array, index: Array) -> tuple[Array, Any]:
    log_probs, state = self.inner.log_probs(state, previous, index)
    word = jax.nn.logsumexp(jnp.where(self.words, log_probs, -jnp.inf), axis=-1,
                            keepdims=True)
    return jnp.where(self.words, word, log_probs), state

  def reorder(self, state: Any, origin: Array) -> Any:
    return self.inner.reorder(state, origin)


def constrained(step: Any, table: symbols.TokenTable, words_as_one: bool = True
                ) -> decoding.Constrained:
  """`step` (a `decoding.Model` or `Ensemble`) restricted to trees by `TreeConstraint`; for
  a 'words' parser with `words_as_one`, placing the next word scored as one action
  (`WordsAsOne`)."""
  if table.copies_words and words_as_one:
    step = WordsAsOne(step, jnp.asarray(np.isin(table.kinds, (symbols.SLOT, symbols.PIECE))))
  return decoding.Constrained(step, TreeConstraint.of(table))
