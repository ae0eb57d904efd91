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

import functools
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


@functools.lru_cache(maxsize=8)
def _indexer(table_bytes: bytes) -> tuple[np.ndarray, np.ndarray] | None:
  """Lookup tables over the top 16 bits of a positive float32 (see `scale_indexes`)."""
  table = np.frombuffer(table_bytes, np.float64)
  lower = table[:-1].astype(np.float32)
  lower = np.where(lower > table[:-1], np.nextafter(lower, np.float32(0)), lower)  # round down
  bits = lower.view(np.uint32)
  hi = bits >> 16
  if np.any(np.diff(hi) == 0):  # Two thresholds in one bucket: table too dense for the shortcut.
    return None
  base = np.searchsorted(hi, np.arange(1 << 16), side="left").astype(np.int32)
  thresh = np.full(1 << 16, np.iinfo(np.uint32).max, np.uint32)
  thresh[hi] = bits
  return base, thresh


def _lut(scale_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  lut = _indexer(np.ascontiguousarray(scale_table, np.float64).tobytes())
  if lut is None:
    raise ValueError("scale table too dense: successive scales must differ by more than 1/128")
  return lut


def _lut_indexes(xp: Any, scale: Any, base: Any, thresh: Any) -> Any:
  """Shared integer core of `scale_indexes` for numpy and jax.numpy (identical results)."""
  s32 = xp.maximum(scale, 0).astype(xp.float32)
  bits = s32.view(xp.uint32) if xp is np else jax.lax.bitcast_convert_type(s32, jnp.uint32)
  hi = ((bits >> 16) & 0x7FFF).astype(xp.int32)  # The mask sends -0.0 to bucket 0.
  return base[hi] + (bits > thresh[hi]).astype(xp.int32)


def scale_indexes(scale: np.ndarray, scale_table: np.ndarray) -> np.ndarray:
  """Host: index of the smallest table scale >= float32(scale) (last index beyond), int32.

  Integer operations only, so every platform computes the same indexes: the bits of a positive
  float32 are ordered like its value, so a lookup on the top 16 bits plus one comparison with the
  single table threshold that can fall in that bucket gives the count of thresholds below the scale.
  Non-positive scales map to index 0. (The coding functions run the same arithmetic under jit.)
  """
  base, thresh = _lut(scale_table)
  return _lut_indexes(np, np.asarray(scale), base, thresh)


@jax.jit
def _encode_prep(y, mean, scale, base, thresh, offset):
  """Fused host-side encoder arithmetic: symbols, indexes, y_hat and an input-validity flag."""
  indexes = _lut_indexes(jnp, scale, base, thresh)
  residual = jnp.round(y - mean)
  ok = (jnp.max(jnp.abs(residual)) < 2**30) & jnp.isfinite(jnp.max(scale))
  values = residual.astype(jnp.int32)
  return values - offset[indexes], indexes, values.astype(mean.dtype) + mean, ok


@jax.jit
def _decode_prep(scale, base, thresh):
  return _lut_indexes(jnp, scale, base, thresh)


@jax.jit
def _decode_finish(symbols, indexes, offset, mean):
  return (symbols + offset[indexes]).astype(mean.dtype) + mean


def _cpu(*arrays: Any) -> list[jax.Array]:
  cpu = jax.devices("cpu")[0]
  return [jax.device_put(a, cpu) for a in arrays]


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


def _float32(x: Any) -> np.ndarray:
  x = np.asarray(x)
  return x if x.dtype == np.float32 else x.astype(np.float32)


def compress(table: tables.CDFTable, scale_table: np.ndarray, y: np.ndarray, mean: np.ndarray,
             scale: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
  """Host: codes round(y - mean) with rows chosen by `scale`. Returns (bytes, y_hat, indexes).

  Inputs are taken as float32 (means and scales from a float64 host path are rounded to float32,
  identically on encoder and decoder); y_hat is float32.
  """
  y, mean, scale = _float32(y), _float32(mean), _float32(scale)
  _check_inputs(y.shape, mean, scale)
  if y.size == 0:
    return b"", y.copy(), np.zeros(y.shape, np.int32)
  base, thresh = _lut(scale_table)
  symbols, indexes, y_hat, ok = _encode_prep(*_cpu(y, mean, scale, base, thresh, table.offset))
  if not bool(ok):
    for name, a in (("gaussian input", y), ("gaussian mean", mean), ("gaussian scale", scale)):
      tables.check_finite(name, a)
    raise errors.InvalidInputError("latent too far from its mean to range-code (>= 2**30)")
  indexes = np.asarray(indexes)
  data = range_coder.encode_symbols(np.asarray(symbols), indexes, table)
  return data, np.asarray(y_hat), indexes


def decompress(table: tables.CDFTable, scale_table: np.ndarray, data: bytes, mean: np.ndarray,
               scale: np.ndarray) -> np.ndarray:
  """Host: inverse of `compress` given the same mean and scale; returns float32 y_hat."""
  mean, scale = _float32(mean), _float32(scale)
  _check_inputs(mean.shape, mean, scale)
  tables.check_finite("gaussian mean", mean)
  tables.check_finite("gaussian scale", scale)
  if mean.size == 0:
    return mean.copy()
  base, thresh = _lut(scale_table)
  cpu_scale, cpu_base, cpu_thresh = _cpu(scale, base, thresh)
  indexes = np.asarray(_decode_prep(cpu_scale, cpu_base, cpu_thresh))
  symbols = range_coder.decode_symbols(data, indexes, table)
  return np.asarray(_decode_finish(*_cpu(symbols, indexes, table.offset, mean)))
