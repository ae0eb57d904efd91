"""Gaussian conditional with a mean and a scale, coded through a scale table.

Minnen, Balle, Toderici, "Joint autoregressive and hierarchical priors for learned image
compression", NeurIPS 2018, eq. (3): y_i ~ N(mu_i, sigma_i^2) convolved with U(-1/2, 1/2), so
P(y_hat) = Phi((y_hat - mu + 1/2) / sigma) - Phi((y_hat - mu - 1/2) / sigma). The value coded is
the integer round(y - mu); y_hat = round(y - mu) + mu.

For coding, sigma is replaced by the smallest entry of a log-spaced scale table that is >= sigma
(64 levels from 0.11 to 256, as CompressAI), so a fixed set of CDF rows serves every element; the
row index of each element is derived from sigma identically by encoder and decoder.

Workflow:
  y_hat, bits = conditional(y, mu, sigma, "noise", key)                       # jit/grad
  table = build_table(default_scale_table())                                  # host, once
  data, y_hat, idx = compress(table, scales, y, mu, sigma)                    # host
  y_hat = decompress(table, scales, data, mu, sigma)                          # host
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from hssc_jax import errors
from hssc_jax.entropy import quantization
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables

SCALE_BOUND = 0.11
LIKELIHOOD_BOUND = 1e-9


def _ndtr(xp: Any):
  return jax.scipy.special.ndtr if xp is jnp else scipy.special.ndtr


def likelihood(y_hat: Any, mean: Any, scale: Any, xp: Any = jnp) -> Any:
  """P(y_hat) under N(mean, scale^2) * U(-1/2, 1/2), evaluated in the left tail for stability."""
  v = xp.abs(y_hat - mean)
  ndtr = _ndtr(xp)
  return ndtr((0.5 - v) / scale) - ndtr((-0.5 - v) / scale)


def bits(y_hat: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
  """-log2 P(y_hat) per element; scales are bounded below by SCALE_BOUND (gradient passes up)."""
  scale = quantization.lower_bound(scale, SCALE_BOUND)
  like = quantization.lower_bound(likelihood(y_hat, mean, scale), LIKELIHOOD_BOUND)
  return -jnp.log2(like)


def conditional(y: jax.Array, mean: jax.Array, scale: jax.Array, mode: str,
                rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Quantizes `y` around `mean` and returns (y_hat, bits per element). Pure; jit/grad safe."""
  y_hat, y_rate = quantization.quantize(y, mode, rng, offset=mean)
  return y_hat, bits(y_rate, mean, scale)


def default_scale_table(lower: float = SCALE_BOUND, upper: float = 256.0,
                        levels: int = 64) -> np.ndarray:
  """Log-spaced scales (float64)."""
  return np.exp(np.linspace(np.log(lower), np.log(upper), levels))


def scale_indexes(scale: np.ndarray, scale_table: np.ndarray) -> np.ndarray:
  """Host: index of the smallest table scale >= scale (last index for larger scales), int32."""
  idx = np.searchsorted(scale_table, np.asarray(scale, np.float64), side="left")
  return np.minimum(idx, len(scale_table) - 1).astype(np.int32)


def build_table(scale_table: np.ndarray, tail_mass: float = 1e-9,
                precision: int = tables.PRECISION) -> tables.CDFTable:
  """One CDF row per table scale over the integers |k| <= ceil(scale * Phi^-1(1 - tail/2))."""
  scale_table = np.asarray(scale_table, np.float64)
  if scale_table.ndim != 1 or np.any(np.diff(scale_table) <= 0) or scale_table[0] <= 0:
    raise ValueError("scale table must be a positive, strictly increasing 1-D array")
  multiplier = -scipy.special.ndtri(tail_mass / 2)
  pmfs, offsets = [], []
  for s in scale_table:
    half = int(np.ceil(s * multiplier))
    k = np.arange(-half, half + 1, dtype=np.float64)
    pmfs.append(likelihood(k, 0.0, s, np))
    offsets.append(-half)
  return tables.from_pmfs(pmfs, offsets, precision)


def _check_inputs(y_shape, mean: np.ndarray, scale: np.ndarray) -> None:
  if mean.shape != tuple(y_shape) or scale.shape != tuple(y_shape):
    raise errors.InvalidInputError(
        f"shapes differ: latent {tuple(y_shape)}, mean {mean.shape}, scale {scale.shape}")
  tables.check_finite("gaussian mean", mean)
  tables.check_finite("gaussian scale", scale)


def compress(table: tables.CDFTable, scale_table: np.ndarray, y: np.ndarray, mean: np.ndarray,
             scale: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
  """Host: codes round(y - mean) with rows chosen by `scale`. Returns (bytes, y_hat, indexes)."""
  y = np.asarray(y)
  mean, scale = np.asarray(mean), np.asarray(scale)
  tables.check_finite("gaussian input", y)
  _check_inputs(y.shape, mean, scale)
  values = np.rint(y - mean).astype(np.int32)
  indexes = scale_indexes(scale, scale_table)
  return range_coder.encode(values, indexes, table), values + mean, indexes


def decompress(table: tables.CDFTable, scale_table: np.ndarray, data: bytes, mean: np.ndarray,
               scale: np.ndarray) -> np.ndarray:
  """Host: inverse of `compress` given the same mean and scale; returns y_hat."""
  mean, scale = np.asarray(mean), np.asarray(scale)
  _check_inputs(mean.shape, mean, scale)
  values = range_coder.decode(data, scale_indexes(scale, scale_table), table)
  return values + mean
