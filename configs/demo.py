"""`make demo`: English→Spanish Bible (embedded corpus), a small pre-LN model, 20 minutes on CPU.

Held-out whole books (dev: Ruth, Acts; test: Esther, John). The model is sized to
learn fast on 2 CPU cores; pre-LN trains stably with a short warm-up where the
paper's post-LN block does not (the paper recipe stays the default elsewhere).
Tuned on 20-minute budgets on the 2-core dev VM (BENCHMARKS.md, "Demo recipe"): d_model
192 (d_ff 768), which takes ~1,100 steps in 20 minutes, beat d_model 256 (~800 steps) and
128; many small steps (16 packed rows of 128 tokens) beat fewer large ones; a short
warm-up at half the paper's peak rate; no dropout (about two epochs in 20 minutes:
regularisation only slows learning); the average of the last 5 checkpoints, 25 steps apart.
"""

from transformer_jax.training.config import default_config


def get_config():
  config = default_config()
  config.dataset = 'bible'
  config.source_lang = 'en'
  config.target_lang = 'es'
  config.vocab_size = 8000
  config.vocab_model_type = 'unigram'
  config.max_len = 128
  config.max_eval_len = 256
  config.batching = 'pack'
  config.batch_size = 16
  config.shuffle_buffer = 20_000
  config.model.update(d_model=192, d_ff=768, num_heads=4, num_encoder_layers=3,
                      num_decoder_layers=3, pre_norm=True, max_len=256, dropout_rate=0.0)
  config.warmup_steps = 150
  config.learning_rate_multiplier = 0.5
  config.num_train_steps = 1_000_000
  config.train_minutes = 20.0
  config.log_every_steps = 25
  config.eval_every_steps = 1_000_000
  config.eval_every_minutes = 10.0
  config.decode_sentences = 200
  config.max_decode_len = 256
  config.save_every_steps = 25
  config.keep_checkpoints = 5
  config.async_checkpointing = False  # CPU: a background writer would slow the steps.
  config.average_last = 5
  return config
