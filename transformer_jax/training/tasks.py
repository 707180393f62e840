"""What differs between tasks: how training pairs are read, and what evaluation computes.

A task is three hooks (`Task`): `read_pairs(config, split, process_index, process_count)`,
a `tf.data.Dataset` of (input, output) string pairs that `input_pipeline` tokenises and
batches; `vocabulary_symbols(config)`, strings the vocabulary must hold as single pieces;
and `make_evaluator(context)`, the function training's periodic evaluation calls beside
the loss (`(label, params, step) -> {name: value}`, logged as `<label>/<name>`).
`config.task` picks one of `TASKS`. Translation reads parallel text (`sources`) and scores
BLEU; parsing reads the embedded treebank as (sentence, linearised tree) pairs and scores
labelled bracket F1 (`transformer_jax.parsing`). Both decode the first
`num_bleu_sentences` sentences of the split `bleu_split` names, greedily.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol, Sequence

import jax
from absl import logging
from jax.sharding import Mesh

from transformer_jax import bleu, decoding, inference
from transformer_jax.model import TransformerConfig
from transformer_jax.workdir import Workdir

# (label, params, step) -> scalars, e.g. {'bleu': 17.5}.
Evaluator = Callable[[str, Any, int], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What a task's evaluation may use (`tokenizer` is None on synthetic data)."""
  config: Any
  workdir: Workdir
  model_config: TransformerConfig
  tokenizer: Any
  mesh: Mesh
  is_main: bool


class Task(Protocol):
  """A task's data hook and evaluation hook."""

  def read_pairs(self, config: Any, split: str, process_index: int = 0,
                 process_count: int = 1) -> Any:
    """This process's shard of a split's (input, output) string pairs (tf.data)."""

  def vocabulary_symbols(self, config: Any) -> Sequence[str]:
    """SentencePiece user-defined symbols for a new vocabulary (each one piece)."""

  def make_evaluator(self, context: EvalContext) -> Optional[Evaluator]:
    """The evaluation beside the loss, or None for none."""


def translate_and_score(params: Any, model_cfg: TransformerConfig, tokenizer: Any,
                        pairs: Sequence[tuple[str, str]], batch_size: int,
                        max_source_len: int, beam_size: int = 1, alpha: float = 0.6,
                        mesh: Optional[Mesh] = None, *,
                        target_lang: str) -> tuple[bleu.BleuScores, list[str]]:
  """Translate the sources of (source, reference) `pairs` greedily (beam_size 1) or with
  beam search: -> (`bleu.BleuScores`: sacreBLEU and tokenized BLEU with the defaults of
  `target_lang`, hypotheses).

  With `mesh` (one process only), each batch is split over its devices and decoded per
  device (`inference.make_translate_fn`)."""
  translate_fn = inference.make_translate_fn(
      inference.LoadedModel(decoding.Model(params, model_cfg), tokenizer),
      beam_size=beam_size, alpha=alpha, mesh=mesh)
  hypotheses = inference.translate_lines([s for s, _ in pairs], translate_fn, tokenizer,
                                         batch_size=batch_size, max_source_len=max_source_len,
                                         progress=False)
  return bleu.corpus_bleu(hypotheses, [t for _, t in pairs],
                          target_lang=target_lang), hypotheses


class Translation:
  """Parallel text (`sources`: text files, the embedded Bible, tfds) scored by BLEU (with
  the tokenizer of `target_lang`) on the first `num_bleu_sentences` pairs of `bleu_split`,
  greedy; the translations are kept in
  `Workdir.translations(label, step)`."""

  def read_pairs(self, config: Any, split: str, process_index: int = 0,
                 process_count: int = 1) -> Any:
    from transformer_jax.training import sources  # tf.data: only when training.
    return sources.raw_dataset(config, split, process_index, process_count)

  def vocabulary_symbols(self, config: Any) -> Sequence[str]:
    return ()

  def make_evaluator(self, context: EvalContext) -> Optional[Evaluator]:
    config = context.config
    if context.tokenizer is None or not config.num_bleu_sentences:
      return None
    from transformer_jax.training import sources
    pairs = sources.load_raw(config, config.bleu_split)
    if config.num_bleu_sentences > 0:
      pairs = pairs[:config.num_bleu_sentences]
    bleu.sacrebleu_metric(config.target_lang)  # its tokenizer loads, before training
    mesh = _decoding_mesh(context.mesh)

    def evaluate(label: str, params: Any, step: int) -> dict[str, float]:
      scores, hypotheses = translate_and_score(
          params, context.model_config, context.tokenizer, pairs, config.decode_batch_size,
          config.max_eval_len, mesh=mesh, target_lang=config.target_lang)
      if context.is_main:
        path = context.workdir.translations(label, step)
        bleu.write_hypotheses(path, hypotheses)
        logging.info('step %d %s on %d %s sentences: %s; translations in %s', step, label,
                     len(pairs), config.bleu_split, bleu.format_scores(scores), path)
      return {'bleu': scores.sacrebleu, 'bleu_tokenized': scores.tokenized}
    return evaluate


def _decoding_mesh(mesh: Mesh) -> Optional[Mesh]:
  """The mesh to decode per device on: one host only (several processes keep the global
  program: each holds all the sentences, and the per-device path takes process-local rows)."""
  return mesh if jax.process_count() == 1 else None


class Parsing:
  """The embedded CRAFT treebank (`parsing.treebank`; `config.<role>_split` names 'train',
  'dev' or 'test') as (words, bracket sequence) pairs, the target symbols one piece each;
  scored by EVALB F1 (all and <= 40 words) and the share of outputs that needed a repair on
  the first `num_bleu_sentences` trees of `bleu_split`, parsed greedily (`parser.GREEDY`);
  the trees are kept in `Workdir.translations(label, step)`."""

  def read_pairs(self, config: Any, split: str, process_index: int = 0,
                 process_count: int = 1) -> Any:
    import tensorflow as tf
    from transformer_jax import parsing
    from transformer_jax.parsing import parser
    sentences, sequences = zip(*parsing.pairs(parser.split_name(config, split)))
    return (tf.data.Dataset.from_tensor_slices((list(sentences), list(sequences)))
            .shard(process_count, process_index))

  def vocabulary_symbols(self, config: Any) -> Sequence[str]:
    from transformer_jax.parsing import parser
    return parser.vocabulary_symbols(parser.split_name(config, 'train'))

  def make_evaluator(self, context: EvalContext) -> Optional[Evaluator]:
    config = context.config
    if context.tokenizer is None or not config.num_bleu_sentences:
      return None
    from transformer_jax.parsing import parser, treebank
    split = parser.split_name(config, config.bleu_split)
    golds = treebank.split_trees(split)
    if config.num_bleu_sentences > 0:
      golds = golds[:config.num_bleu_sentences]
    mesh = _decoding_mesh(context.mesh)

    def evaluate(label: str, params: Any, step: int) -> dict[str, float]:
      model = inference.LoadedModel(decoding.Model(params, context.model_config),
                                    context.tokenizer)
      result = parser.parse_and_score(model, golds, parser.GREEDY, config.decode_batch_size,
                                      mesh)
      if context.is_main:
        path = context.workdir.translations(label, step)
        parser.write_trees(path, result.trees)
        logging.info('step %d %s on %d %s trees (greedy): %s; <= 40 words: %s; %.1f%% '
                     'repaired; trees in %s', step, label, len(golds), split,
                     result.scores['all'], result.scores['len<=40'], result.repaired_percent,
                     path)
      return parser.summary(result)
    return evaluate


TASKS: dict[str, Task] = {'translation': Translation(), 'parsing': Parsing()}


def get_task(config: Any) -> Task:
  """The task `config.task` names; ValueError for an unknown one."""
  if config.task not in TASKS:
    raise ValueError(f'config.task={config.task!r}: expected one of {sorted(TASKS)}')
  return TASKS[config.task]
