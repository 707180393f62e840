"""Table 3 of the paper: variations of the base model, `--config=configs/table3.py:A1`.

Only the rows that change the model or its regularisation (every row but the base):
  A1-A4  heads h with d_k = d_v = 512 / h: 1, 4, 16, 32
  B1-B2  d_k 16, 32 (h 8, d_v 64)
  C1-C7  N 2, 4, 8; d_model 256 (d_k = d_v 32), 1024 (d_k = d_v 128); d_ff 1024, 4096
  D1-D4  P_drop 0.0, 0.2; ε_ls 0.0, 0.2
  E      learned positional embeddings instead of sinusoids
Each variant trains like the base model (`configs/base.py`, 100k steps).
"""

from transformer_jax.training.config import default_config

# Variant -> (changes to config.model, changes to the top-level config).
VARIANTS = {
    'A1': ({'num_heads': 1, 'd_k': 512, 'd_v': 512}, {}),
    'A2': ({'num_heads': 4, 'd_k': 128, 'd_v': 128}, {}),
    'A3': ({'num_heads': 16, 'd_k': 32, 'd_v': 32}, {}),
    'A4': ({'num_heads': 32, 'd_k': 16, 'd_v': 16}, {}),
    'B1': ({'d_k': 16, 'd_v': 64}, {}),
    'B2': ({'d_k': 32, 'd_v': 64}, {}),
    'C1': ({'num_encoder_layers': 2, 'num_decoder_layers': 2}, {}),
    'C2': ({'num_encoder_layers': 4, 'num_decoder_layers': 4}, {}),
    'C3': ({'num_encoder_layers': 8, 'num_decoder_layers': 8}, {}),
    'C4': ({'d_model': 256, 'd_k': 32, 'd_v': 32}, {}),
    'C5': ({'d_model': 1024, 'd_k': 128, 'd_v': 128}, {}),
    'C6': ({'d_ff': 1024}, {}),
    'C7': ({'d_ff': 4096}, {}),
    'D1': ({'dropout_rate': 0.0}, {}),
    'D2': ({'dropout_rate': 0.2}, {}),
    'D3': ({}, {'label_smoothing': 0.0}),
    'D4': ({}, {'label_smoothing': 0.2}),
    'E': ({'positional': 'learned'}, {}),
}

# Parameter counts the paper reports (×10^6); rows without one share the base's 65M.
PAPER_PARAMS_M = {'B1': 58, 'B2': 60, 'C1': 36, 'C2': 50, 'C3': 80, 'C4': 28, 'C5': 168,
                  'C6': 53, 'C7': 90}


def get_config(variant: str):
  if variant not in VARIANTS:
    raise ValueError(f'unknown Table 3 variant {variant!r}; choose one of {", ".join(VARIANTS)}')
  model_changes, changes = VARIANTS[variant]
  config = default_config()
  config.model.update(model_changes)
  config.update(changes)
  return config
