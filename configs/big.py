"""The paper's big model on WMT14 EN→DE: d_model 1024, d_ff 4096, h 16, P_drop 0.3, 300k steps.

The paper averages the last 20 checkpoints of the big models.
"""

from transformer_jax.training.config import default_config


def get_config():
  config = default_config()
  config.model.update(d_model=1024, d_ff=4096, num_heads=16, dropout_rate=0.3)
  config.num_train_steps = 300_000
  config.average_last = 20
  config.keep_checkpoints = 20
  return config
