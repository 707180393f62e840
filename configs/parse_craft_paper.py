"""The paper's parsing model (§6.3: 4 layers, d_model 1024, WSJ-only setting) on the
embedded CRAFT treebank, for accelerators.

The paper's base recipe (post-LN, 4,000 warm-up steps) with 4 encoder and 4 decoder
layers of d_model 1024; what the paper leaves unsaid is chosen as for its big model
(d_ff 4096, 16 heads, dropout 0.3: it tuned dropout on the dev set without giving it);
a 16,000-piece vocabulary holding the target symbols as single pieces; batches of
~12k source and target tokens. Decoding as the paper: beam 21, alpha 0.3, at most
source + 300 tokens (`transformer-jax-parse`'s defaults); training's evaluation parses
the whole dev split greedily.
"""

from transformer_jax.training.config import default_config


def get_config():
  config = default_config()
  config.task = 'parsing'
  config.dataset = 'craft'
  config.train_split, config.eval_split, config.test_split = 'train', 'dev', 'test'
  config.vocab_size = 16000
  config.vocab_model_type = 'unigram'
  config.max_len = 512
  config.max_eval_len = 512
  config.batching = 'tokens'
  config.tokens_per_batch = 12_288
  config.model.update(d_model=1024, d_ff=4096, num_heads=16, num_encoder_layers=4,
                      num_decoder_layers=4, dropout_rate=0.3, max_len=1024)
  config.warmup_steps = 4000
  config.num_train_steps = 50_000
  config.eval_every_steps = 2500
  config.decode_sentences = -1
  config.decode_batch_size = 64
  config.save_every_steps = 2500
  config.average_last = 5
  return config
