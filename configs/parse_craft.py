"""English constituency parsing (the paper's §6.3) on the embedded CRAFT treebank, sized for
20 minutes on 2 CPU cores: `python scripts/parse_demo.py`, or
`transformer-jax-train --config=configs/parse_craft.py --workdir=DIR`.

Sentences (words) -> Vinyals-style bracket sequences (`transformer_jax.parsing`), split by
whole articles (train 55, dev 5, test 5). The recipe is `configs/demo.py`'s, tuned there
for 20 CPU minutes (pre-LN, d_model 192, 3+3 layers, no dropout, short warm-up at half the
paper's peak rate, packed rows, the average of the last 5 checkpoints 25 steps apart),
with rows of 256 tokens for the longer targets, and targets that spell the words
(`linearization='words'`: the paper's `XX` slots learn far slower here, BENCHMARKS.md).
Vocabulary: 4,000 unigram pieces with the target symbols as single pieces
(`parser.vocabulary_symbols`); sources average 43 pieces, targets 80. max_len 256 keeps
all but 152 of the 18,918 training pairs (longer ones are dropped, as the log says); the
position table (model.max_len 1024) covers decoding any test sentence with up to
source + 300 output tokens. Evaluation parses the first 400 dev sentences greedily every
20 training minutes (eval/f1 in metrics.jsonl); the paper's decoding (beam 21, alpha 0.3,
source + 300) and the greedy one are `transformer-jax-parse`'s flags
(`parsing.parser.PAPER`, `GREEDY`).
"""

import os

from transformer_jax.training.config import load_config


def get_config():
  config = load_config(os.path.join(os.path.dirname(__file__), 'demo.py'))  # its recipe
  config.task = 'parsing'
  config.dataset = 'craft'
  config.train_split, config.eval_split, config.test_split = 'train', 'dev', 'test'
  config.source_lang = config.target_lang = 'en'  # words -> trees of English
  config.linearization = 'words'  # 53 test F1 in 20 quiet minutes; the paper's 'xx': 19
  config.vocab_size = 4000
  config.max_len = 256
  config.batch_size = 8
  config.model.max_len = 1024
  config.eval_every_minutes = 20.0
  config.num_eval_batches = 20
  config.decode_sentences = 400
  return config
