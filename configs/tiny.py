"""A tiny model on synthetic tokens: seconds per run, no TensorFlow, for tests."""

from transformer_jax.training.config import default_config


def get_config():
  config = default_config()
  config.dataset = 'synthetic'
  config.vocab_size = 64
  config.max_len = 16
  config.max_eval_len = 16
  config.batching = 'pack'
  config.batch_size = 8
  config.model.update(d_model=32, d_ff=64, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, max_len=32)
  config.warmup_steps = 10
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.save_every_steps = 3
  config.keep_checkpoints = 2
  config.average_last = 2
  config.progress_bar = False
  return config
