"""Autoregressive decoding: searches over one step interface.

  * `steps`: what a search decodes with. A `Step` maps a carried state and the previous
    token to the next token's log-probabilities; `Model` (one Transformer's cached
    decoder), `Ensemble` (several models' mean) and `Constrained` (a step masked by a
    `Constraint`, e.g. parsing's tree automaton) are steps. `model_or_ensemble(params,
    config)` makes one of a model's params and config (or of sequences of them).
  * `search`: `greedy`, `sample` and `beam_search` (n-best, the exact stopping rule) ->
    one `Result`; `search(step, inputs, Search(...))` picks one by its options.
  * `sampling`: temperature, top-k and nucleus filtering.
  * `devices`: per-device decoding over a mesh (`mesh=`).

    step = decoding.model_or_ensemble(params, config)
    result = decoding.beam_search(step, inputs, beam_size=4, alpha=0.6)
    best = result.best                      # [B, L] ids: the output, EOS, zeros
"""

from transformer_jax.decoding.sampling import filter_logits
from transformer_jax.decoding.searches import (BeamState, Result, Search, beam_search, greedy,
                                             length_penalty, sample, search, trim)
from transformer_jax.decoding.steps import (Constrained, Constraint, Ensemble, Model,
                                            ModelOrEnsemble, Start, Step, model_or_ensemble,
                                            reorder_rows)

__all__ = ['BeamState', 'Constrained', 'Constraint', 'Ensemble', 'Model', 'ModelOrEnsemble',
           'Result', 'Search', 'Start', 'Step', 'beam_search', 'filter_logits', 'greedy',
           'length_penalty', 'model_or_ensemble', 'reorder_rows', 'sample', 'search', 'trim']
