"""What differs between tasks: how training pairs are read, and what evaluation computes.

A task (`Task`) is four hooks: `read_pairs(config, split, process_index, process_count)`,
a `tf.data.Dataset` of (input, output) string pairs that `input_pipeline` tokenises and
batches; `vocabulary_symbols(config)`, strings the vocabulary must hold as single pieces;
`eval_examples(config, split)`, what evaluation decodes; and `decode_and_score(model,
examples, config, mesh)`, decoding them greedily and scoring the outputs. `make_evaluator`
builds from the last two the function training's periodic evaluation calls beside the
loss (`(label, params, step) -> {name: value}`, logged as `<label>/<name>`): it decodes
the first `decode_sentences` examples of the split `decode_split` names and keeps the
outputs in `Workdir.translations(label, step)`. `config.task` picks one of `TASKS`.
Translation reads parallel text (`sources`) and scores BLEU; parsing reads the embedded
treebank as (sentence, linearised tree) pairs and scores labelled bracket F1
(`transformer_jax.parsing`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

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


class Scored(NamedTuple):
  """What decoding evaluation examples gives: the scalars to log, one output line per
  example (kept in the workdir) and a one-line summary for the log."""
  metrics: dict[str, float]
  outputs: list[str]
  summary: str


class Task(Protocol):
  """A task's data hooks and evaluation hooks."""

  def read_pairs(self, config: Any, split: str, process_index: int = 0,
                 process_count: int = 1) -> Any:
    """This process's shard of a split's (input, output) string pairs (tf.data)."""

  def vocabulary_symbols(self, config: Any) -> Sequence[str]:
    """SentencePiece user-defined symbols for a new vocabulary (each one piece)."""

  def eval_examples(self, config: Any, split: str) -> Sequence[Any]:
    """The examples of `split` that evaluation decodes (in order)."""

  def decode_and_score(self, model: inference.LoadedModel, examples: Sequence[Any],
                       config: Any, mesh: Optional[Mesh]) -> Scored:
    """Decode `examples` greedily with `model` (per device on `mesh`) and score them."""


def make_evaluator(task: Task, context: EvalContext) -> Optional[Evaluator]:
  """The evaluation beside the loss: `task` decodes the first `decode_sentences` examples
  of `decode_split`; None if there is none (0 sentences, or synthetic data)."""
  config = context.config
  if context.tokenizer is None or not config.decode_sentences:
    return None
  examples = task.eval_examples(config, config.decode_split)
  if config.decode_sentences > 0:
    examples = examples[:config.decode_sentences]
  # One host: per device (several processes keep the global program: each holds all the
  # sentences, and the per-device path takes process-local rows).
  mesh = context.mesh if jax.process_count() == 1 else None

  def evaluate(label: str, params: Any, step: int) -> dict[str, float]:
    model = inference.LoadedModel(decoding.Model(params, context.model_config),
                                  context.tokenizer)
    scored = task.decode_and_score(model, examples, config, mesh)
    if context.is_main:
      path = context.workdir.translations(label, step)
      bleu.write_hypotheses(path, scored.outputs)
      logging.info('step %d %s on %d %s examples: %s; outputs in %s', step, label,
                   len(examples), config.decode_split, scored.summary, path)
    return scored.metrics
  return evaluate


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
  the tokenizer of `target_lang`), translated greedily."""

  def read_pairs(self, config: Any, split: str, process_index: int = 0,
                 process_count: int = 1) -> Any:
    from transformer_jax.training import sources  # tf.data: only when training.
    return sources.raw_dataset(config, split, process_index, process_count)

  def vocabulary_symbols(self, config: Any) -> Sequence[str]:
    return ()

  def eval_examples(self, config: Any, split: str) -> Sequence[tuple[str, str]]:
    from transformer_jax.training import sources
    bleu.sacrebleu_metric(config.target_lang)  # its tokenizer loads, before training
    return sources.load_raw(config, split)

  def decode_and_score(self, model: inference.LoadedModel,
                       examples: Sequence[tuple[str, str]], config: Any,
                       mesh: Optional[Mesh]) -> Scored:
    scores, hypotheses = translate_and_score(
        model.decoder.params, model.decoder.config, model.vocab, examples,
        config.decode_batch_size, config.max_eval_len, mesh=mesh,
        target_lang=config.target_lang)
    return Scored({'bleu': scores.sacrebleu, 'bleu_tokenized': scores.tokenized},
                  hypotheses, bleu.format_scores(scores))


class Parsing:
  """The embedded CRAFT treebank (`parsing.treebank`; `config.<role>_split` names 'train',
  'dev' or 'test') as (words, bracket sequence) pairs, the target symbols one piece each;
  scored by EVALB F1 (all and <= 40 words) and the share of outputs that needed a repair,
  parsed greedily (`parser.GREEDY`)."""

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

  def eval_examples(self, config: Any, split: str) -> Sequence[Any]:
    from transformer_jax.parsing import parser, treebank
    return treebank.split_trees(parser.split_name(config, split))

  def decode_and_score(self, model: inference.LoadedModel, examples: Sequence[Any],
                       config: Any, mesh: Optional[Mesh]) -> Scored:
    from transformer_jax.parsing import parser
    result = parser.parse_and_score(model, examples, parser.GREEDY, config.decode_batch_size,
                                    mesh)
    return Scored(parser.summary(result), [str(tree) for tree in result.trees],
                  f'{result.scores["all"]}; <= 40 words: {result.scores["len<=40"]}; '
                  f'{result.repaired_percent:.1f}% repaired')


TASKS: dict[str, Task] = {'translation': Translation(), 'parsing': Parsing()}


def get_task(config: Any) -> Task:
  """The task `config.task` names; ValueError for an unknown one."""
  if config.task not in TASKS:
    raise ValueError(f'config.task={config.task!r}: expected one of {sorted(TASKS)}')
  return TASKS[config.task]
