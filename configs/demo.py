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
  # Data: the embedded corpus, a joint unigram vocabulary, packed rows.
  config.update(dataset='bible', source_lang='en', target_lang='es', vocab_size=8000,
                vocab_model_type='unigram', max_len=128, max_eval_len=256, batching='pack',
                batch_size=16, shuffle_buffer=20_000)
  config.model.update(d_model=192, d_ff=768, num_heads=4, num_encoder_layers=3,
                      num_decoder_layers=3, pre_norm=True, max_len=256, dropout_rate=0.0)
  # Optimisation and the loop's clock: 20 training minutes, evaluation every 10.
  config.update(warmup_steps=150, learning_rate_multiplier=0.5, num_train_steps=1_000_000,
                train_minutes=20.0, log_every_steps=25, eval_every_steps=1_000_000,
                eval_every_minutes=10.0, decode_sentences=200, max_decode_len=256)
  # Checkpoints 25 steps apart, the last 5 averaged; a background writer would slow the
  # steps on CPU.
  config.update(save_every_steps=25, keep_checkpoints=5, async_checkpointing=False,
                average_last=5)
  return config
