"""`make demo`: build the paper's base model and run a forward pass (training comes next)."""

import jax
import jax.numpy as jnp

from transformer_jax import Transformer, TransformerConfig, count_params


def main() -> None:
  config = TransformerConfig.base(vocab_size=37000)
  model = Transformer(config)
  src = jnp.ones((2, 16), jnp.int32)
  tgt = jnp.ones((2, 12), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), src, tgt)['params']
  logits = jax.jit(model.apply)({'params': params}, src, tgt)
  print(f'base model: {count_params(params) / 1e6:.2f}M parameters; '
        f'logits {tuple(logits.shape)} finite={bool(jnp.isfinite(logits).all())}')


if __name__ == '__main__':
  main()
