"""Channel-wise autoregressive context model with latent residual prediction (LRP).

Minnen and Singh, "Channel-wise autoregressive entropy models for learned image compression",
ICIP 2020, fig. 2. The latent y (N, H, W, C) is split along channels into slices y_1..y_S, coded in
order. For slice i, with y_hat_<i the already decoded slices (at most `max_support` of them):

  mu_i    = T^mu_i   (concat(hyper_means,  y_hat_<i))
  sigma_i = T^sigma_i(concat(hyper_scales, y_hat_<i))
  y_hat_i = round(y_i - mu_i) + mu_i                          (noise or STE in training)
  y_hat_i = y_hat_i + 1/2 tanh(T^lrp_i(concat(hyper_means, y_hat_<i, y_hat_i)))     (LRP)

where hyper_means and hyper_scales come from the hyper-synthesis transform. This is the channel-wise
context entropy model HSC (Li et al., 2025) uses for its feature latent.

`ChannelContext.__call__` is the pure training/evaluation pass (returns y_hat and bits); the host
functions `compress`/`decompress` run the same transforms slice by slice through the deterministic
float64 path of `determinism.HostFunction` and code all slices into one range-coded stream.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.entropy import determinism
from hssc_jax.entropy import gaussian
from hssc_jax.entropy import quantization
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables


class ContextTransform(nn.Module):
  """Conv stack with ReLU between layers, mapping a support tensor to `features` channels."""

  hidden: Sequence[int]
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    for width in self.hidden:
      x = nn.relu(nn.Conv(width, k, padding="SAME")(x))
    return nn.Conv(self.features, k, padding="SAME")(x)


def slice_bounds(channels: int, num_slices: int) -> list[tuple[int, int]]:
  """Channel ranges of the slices (as even as possible, the first ones larger)."""
  if not 1 <= num_slices <= channels:
    raise ValueError(f"need 1 <= num_slices <= channels, got {num_slices} slices of {channels}")
  sizes = [len(a) for a in np.array_split(np.arange(channels), num_slices)]
  ends = np.cumsum(sizes)
  return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


class ChannelContext(nn.Module):
  """Channel-conditional entropy model over a latent of `channels` channels (see module doc)."""

  channels: int
  num_slices: int = 4
  max_support: int = 4
  hidden: Sequence[int] = (128, 64)
  kernel_size: int = 3
  lrp: bool = True

  def setup(self):
    self.bounds = slice_bounds(self.channels, self.num_slices)
    mk = lambda n: ContextTransform(self.hidden, n, self.kernel_size)
    self.mean_transforms = [mk(e - s) for s, e in self.bounds]
    self.scale_transforms = [mk(e - s) for s, e in self.bounds]
    if self.lrp:
      self.lrp_transforms = [mk(e - s) for s, e in self.bounds]

  def _support(self, prev: Sequence[jax.Array]) -> list[jax.Array]:
    return list(prev)[-self.max_support:] if self.max_support > 0 else []

  def entropy_parameters(self, i: int, hyper_means: jax.Array, hyper_scales: jax.Array,
                         prev: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(mu_i, sigma_i) of slice i from the hyper outputs and the decoded slices before it."""
    support = self._support(prev)
    mu = self.mean_transforms[i](jnp.concatenate([hyper_means, *support], axis=-1))
    sigma = self.scale_transforms[i](jnp.concatenate([hyper_scales, *support], axis=-1))
    return mu, sigma

  def residual(self, i: int, hyper_means: jax.Array, prev: Sequence[jax.Array],
               y_hat_i: jax.Array) -> jax.Array:
    """Latent residual prediction: y_hat_i + 1/2 tanh(T^lrp_i(...)); identity without LRP."""
    if not self.lrp:
      return y_hat_i
    support = jnp.concatenate([hyper_means, *self._support(prev), y_hat_i], axis=-1)
    return y_hat_i + 0.5 * jnp.tanh(self.lrp_transforms[i](support))

  def __call__(self, y: jax.Array, hyper_means: jax.Array, hyper_scales: jax.Array,
               mode: str) -> tuple[jax.Array, jax.Array]:
    """Returns (y_hat, bits per element of y)."""
    if y.shape[-1] != self.channels:
      raise errors.InvalidInputError(f"latent has {y.shape[-1]} channels, model {self.channels}")
    rngs = (jax.random.split(self.make_rng("noise"), self.num_slices)
            if quantization.needs_rng(mode) else [None] * self.num_slices)
    y_hats, all_bits = [], []
    for i, (s, e) in enumerate(self.bounds):
      mu, sigma = self.entropy_parameters(i, hyper_means, hyper_scales, y_hats)
      y_hat_i, b = gaussian.conditional(y[..., s:e], mu, sigma, mode, rngs[i])
      y_hats.append(self.residual(i, hyper_means, y_hats, y_hat_i))
      all_bits.append(b)
    return jnp.concatenate(y_hats, axis=-1), jnp.concatenate(all_bits, axis=-1)


@functools.lru_cache(maxsize=64)
def _host_functions(model: ChannelContext, jit: bool) -> list[tuple[Any, Any]]:
  """Per-slice deterministic host functions (entropy parameters, residual) for `model`."""
  fns = []
  for i in range(model.num_slices):
    params_fn = lambda p, hm, hs, prev, i=i: model.apply(
        {"params": p}, i, hm, hs, prev, method=ChannelContext.entropy_parameters)
    lrp_fn = lambda p, hm, prev, yh, i=i: model.apply(
        {"params": p}, i, hm, prev, yh, method=ChannelContext.residual)
    fns.append((determinism.HostFunction(params_fn, jit), determinism.HostFunction(lrp_fn, jit)))
  return fns


def compress(model: ChannelContext, params: Any, table: tables.CDFTable, scale_table: np.ndarray,
             y: np.ndarray, hyper_means: np.ndarray, hyper_scales: np.ndarray,
             jit: bool = True) -> tuple[bytes, np.ndarray, int]:
  """Host: codes all slices of `y` into one stream.

  Means and reconstructions are rounded from float64 to float32, so last-ulp differences between
  compilations vanish from y_hat; scales index the table in float64. Returns (bytes, y_hat (float32,
  exactly what the decoder reconstructs), index digest).
  """
  y = np.asarray(y)
  tables.check_finite("channel-context input", y)
  if y.shape[-1] != model.channels:
    raise errors.InvalidInputError(f"latent has {y.shape[-1]} channels, model {model.channels}")
  bounds = slice_bounds(model.channels, model.num_slices)
  y_hats, values, indexes = [], [], []
  for (s, e), (params_fn, lrp_fn) in zip(bounds, _host_functions(model, jit)):
    mu, sigma = params_fn(params, hyper_means, hyper_scales, tuple(y_hats))
    mu = mu.astype(np.float32)
    v = np.rint(y[..., s:e] - mu).astype(np.int32)
    values.append(v.ravel())
    indexes.append(gaussian.scale_indexes(sigma, scale_table).ravel())
    y_hats.append(lrp_fn(params, hyper_means, tuple(y_hats), v + mu).astype(np.float32))
  data = range_coder.encode(np.concatenate(values), np.concatenate(indexes), table)
  return data, np.concatenate(y_hats, axis=-1), determinism.digest(*indexes)


def decompress(model: ChannelContext, params: Any, table: tables.CDFTable, scale_table: np.ndarray,
               data: bytes, hyper_means: np.ndarray, hyper_scales: np.ndarray,
               expected_digest: int | None = None, jit: bool = True) -> np.ndarray:
  """Host: inverse of `compress`; returns y_hat (float32). Checks the index digest if given."""
  bounds = slice_bounds(model.channels, model.num_slices)
  decoder = range_coder.Decoder(data, table, np.size(hyper_means))
  y_hats, indexes = [], []
  for (s, e), (params_fn, lrp_fn) in zip(bounds, _host_functions(model, jit)):
    mu, sigma = params_fn(params, hyper_means, hyper_scales, tuple(y_hats))
    idx = gaussian.scale_indexes(sigma, scale_table)
    indexes.append(idx.ravel())
    v = decoder.decode(idx)
    y_hats.append(lrp_fn(params, hyper_means, tuple(y_hats), v + mu.astype(np.float32))
                  .astype(np.float32))
  if expected_digest is not None:
    determinism.check_digest(expected_digest, *indexes)
  decoder.finish()
  return np.concatenate(y_hats, axis=-1)
