"""A tiny model on synthetic tokens: seconds per run, no TensorFlow, for tests."""

from transformer_jax.training.config import default_config


def get_config():
  config = default_config()
  config.update(dataset='synthetic', vocab_size=64, max_len=16, max_eval_len=16,
                batching='pack', batch_size=8)
  config.model.update(d_model=32, d_ff=64, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, max_len=32)
  config.update(warmup_steps=10, num_train_steps=6, log_every_steps=2, eval_every_steps=3,
                save_every_steps=3, keep_checkpoints=2, average_last=2, progress_bar=False)
  return config
