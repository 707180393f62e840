"""The optimizer: Adam on the paper's learning-rate schedule (§5.3), optionally clipped."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax


def learning_rate_schedule(d_model: int, warmup_steps: int, multiplier: float = 1.0,
                           cooldown_steps: int = 0, total_steps: int = 0) -> optax.Schedule:
  """Paper eq. 3 as a function of the 1-based step s (update s of `total_steps`):

  lr(s) = multiplier · d_model^-0.5 · min(s^-0.5, s · warmup^-1.5),

  times min(1, (total_steps + 1 - s) / (cooldown_steps + 1)) when `cooldown_steps` > 0:
  the last `cooldown_steps` updates decay linearly, by 1/(cooldown_steps + 1) of the rate
  each, toward the 0 that step total_steps + 1 would have; every update of the run keeps a
  positive rate (not in the paper; for short runs).
  """
  def schedule(step):
    s = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    lr = multiplier * d_model ** -0.5 * jnp.minimum(s ** -0.5, s * warmup_steps ** -1.5)
    if cooldown_steps:
      lr = lr * jnp.clip((total_steps + 1 - s) / (cooldown_steps + 1), 0.0, 1.0)
    return lr
  return schedule


def create_optimizer(config: Any, d_model: int) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
  """Adam(b1, b2, eps) on the paper's schedule, after optional global-norm clipping.

  Returns (optimizer, schedule); optax counts updates from 0, so update n uses lr(n + 1).
  With `flatten_optimizer` Adam runs on all parameters raveled into one vector (the same
  updates in a few large kernels instead of a few per leaf; its state is then one
  replicated vector, so keep it off when the mesh shards parameters).
  """
  schedule = learning_rate_schedule(d_model, config.warmup_steps,
                                    config.learning_rate_multiplier, config.cooldown_steps,
                                    config.num_train_steps)
  adam = optax.adam(lambda count: schedule(count + 1), b1=config.adam_b1,
                    b2=config.adam_b2, eps=config.adam_eps)
  if config.flatten_optimizer:
    adam = optax.flatten(adam)
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam), schedule
  return adam, schedule
