"""The paper's base model and recipe (Vaswani et al. 2017): WMT14 EN→DE from tfds.

N=6, d_model 512, d_ff 2048, h 8, P_drop 0.1, ε_ls 0.1, shared 37k BPE vocabulary,
~25k source + 25k target tokens per step, Adam(0.9, 0.98, 1e-9), warmup 4000,
100k steps, average of the last 5 checkpoints. On one device raise
`grad_accum_steps` (and lower `tokens_per_batch`) to keep ~25k tokens per step.
"""

from transformer_jax.training.config import default_config


def get_config():
  return default_config()
