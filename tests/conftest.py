"""Shared test set-up: CPU only, a persistent compilation cache, tiny shared models."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Test programs are tiny, so compiling them dominates: without LLVM's optimisations XLA
# compiles about twice as fast. Subprocesses inherit this; later flags override it.
os.environ['XLA_FLAGS'] = ' '.join(
    filter(None, [os.environ.get('XLA_FLAGS'), '--xla_backend_optimization_level=0']))

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# Start JAX now: a CLI's main() called in-process asks for CPU devices before JAX's first
# computation, which must not change the device count of the tests that follow.
jax.devices()


def pytest_collection_modifyitems(items):
  """Slow (multi-process) tests first, so that pytest-xdist's workers finish together."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)


@pytest.fixture(scope='session')
def tiny_config():
  """A small post-LN model, dropout off, used across the model tests."""
  from transformer_jax import TransformerConfig
  return TransformerConfig(vocab_size=40, d_model=32, d_ff=64, num_heads=4,
                           num_encoder_layers=2, num_decoder_layers=2, max_len=64,
                           dropout_rate=0.0)


@pytest.fixture(scope='session')
def tiny_params(tiny_config):
  import jax.numpy as jnp
  from flax import linen as nn
  from transformer_jax import Transformer
  model = Transformer(tiny_config)
  ones = jnp.ones((1, 8), jnp.int32)
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ones, ones)['params'])
