"""Dense projections with outputs-first kernels, and the matmul that suits small batches.

Every projection in the model stores its kernel outputs-first, `[*out_shape, *in_shape]`
(as `torch.nn.Linear` does): the query/key/value kernels are [N, H, D], the attention
output kernel [D, N, H], the FFN kernels [d_ff, D] and [D, d_ff], a separate output
projection [V, D], like the shared embedding table [V, D] that the logits reuse.

Why: decoding multiplies a few rows (batch x beam) by every weight matrix at every step,
so a step is bound by streaming the weights. On CPU, `project` then computes the
transposed product, W [N, K] @ xᵀ [K, M]: the weights are read in their stored order and
only the small activation is re-packed (optimisation barriers keep XLA from folding the
two transposes back into the usual x @ Wᵀ). On a 2-core AVX2 VM, with W 2048 x 512, that
runs about 2x as fast as XLA's own products (x @ W or x @ Wᵀ) at 8 and 32 rows and 1.2x
at 128 (`benchmarks/bench_matmul_rows.py`). Where it is used is the backend policy's
choice (`backend.Policy.weights_major_max_rows`); elsewhere, the plain dot.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from transformer_jax import backend

Array = jax.Array
Dtype = Any

def project(x: Array, kernel: Array, num_in: int = 1) -> Array:
  """x [..., *in_shape] · kernel [*out_shape, *in_shape] -> [..., *out_shape].

  Contracts the trailing `num_in` axes of `x` with the trailing `num_in` axes of `kernel`
  (no bias, no dtype promotion).
  """
  lead, in_shape = x.shape[:x.ndim - num_in], x.shape[x.ndim - num_in:]
  out_shape = kernel.shape[:kernel.ndim - num_in]
  if kernel.shape[kernel.ndim - num_in:] != in_shape:
    raise ValueError(f'input axes {in_shape} do not match kernel {kernel.shape} '
                     f'(outputs first, then {num_in} input axes)')
  rows = math.prod(lead)
  if rows <= backend.policy().weights_major_max_rows:
    x_t = lax.optimization_barrier(x.reshape(rows, -1).T)  # [K, M]: small, re-packed
    y_t = lax.optimization_barrier(kernel.reshape(-1, x_t.shape[0]) @ x_t)  # [N, M]
    return y_t.T.reshape(*lead, *out_shape)
  contract = (tuple(range(len(lead), x.ndim)), tuple(range(len(out_shape), kernel.ndim)))
  return lax.dot_general(x, kernel, (contract, ((), ())))


class Linear(nn.Module):
  """y = x · Wᵀ + b over the trailing `num_in` axes of x: [..., *in] -> [..., *features].

  Attributes:
    features: the output shape (kernel axes before the input axes).
    kernel_axes: logical axis names of the kernel, outputs first (the bias takes the
      output ones); empty for no names.
    num_in: how many trailing input axes are contracted.
    use_bias: add a bias of shape `features`.
    dtype / param_dtype: compute and parameter dtypes.
    kernel_init: initializer of the [*features, *in] kernel; default Glorot uniform with
      fan-out over `features` and fan-in over the input axes.
  """
  features: Sequence[int]
  kernel_axes: Sequence[Optional[str]] = ()
  num_in: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Optional[Callable[..., Array]] = None

  @nn.compact
  def weights(self, in_shape: Sequence[int]) -> tuple[Array, Optional[Array]]:
    """The kernel [*features, *in_shape] and bias [*features] (None without bias) in the
    compute dtype, created at initialisation."""
    features = tuple(self.features)
    shape = features + tuple(in_shape)
    init = self.kernel_init or nn.initializers.xavier_uniform(
        in_axis=tuple(range(len(features), len(shape))), out_axis=tuple(range(len(features))))
    axes = tuple(self.kernel_axes) or (None,) * len(shape)
    kernel = self.param('kernel', nn.with_logical_partitioning(init, axes), shape,
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             axes[:len(features)]),
                        features, self.param_dtype)
    kernel, bias = nn.dtypes.promote_dtype(kernel, bias, dtype=self.dtype)
    return kernel, bias

  def __call__(self, x: Array) -> Array:
    kernel, bias = self.weights(x.shape[x.ndim - self.num_in:])
    y = project(jnp.asarray(x, self.dtype), kernel, self.num_in)
    return y if bias is None else y + bias
