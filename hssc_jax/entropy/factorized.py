"""Factorized prior with a learned per-channel density: the "entropy bottleneck".

Balle, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale hyperprior",
ICLR 2018, appendix 6.1. Each channel c has a univariate cumulative c(x) = sigmoid(f_K o ... o f_1(x)),
with f_k(x) = h_k(H_k x + b_k), H_k = softplus(raw matrices) >= 0 and
h_k(x) = x + tanh(a_k) * tanh(x) (identity on the last layer), so c is monotone. The probability of an
integer-quantized value is P(x) = c(x + 1/2) - c(x - 1/2) (eq. 11 convolved with U(-1/2, 1/2)).

Workflow:
  params = EntropyBottleneck().init(...)            # a Flax module over this file's pure functions
  z_hat, bits = EntropyBottleneck().apply(params, z, "noise", rngs={"noise": key})   # in jit/grad
  table = build_table(params["params"]["density"])  # host, float64 numpy, once after training
  data = compress(table, z); z_hat = decompress(table, data, z.shape)                 # host

Quantization is plain rounding (no learned offset), and tail bounds are found by bisection when the
table is built, so there is no auxiliary loss or optimizer. With `qualities` = Q > 0 the module holds
Q densities (every parameter with a leading axis of Q) and codes with the one of `quality`: a
variable-rate codec's hyper-latents are distributed differently at every quality
(`hssc_jax.training.z_priors`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax.entropy import quantization
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables
from hssc_jax import errors

LIKELIHOOD_BOUND = 1e-9


def _dims(params: Any) -> int:
  return len([k for k in params if k.startswith("matrix_")])


def logits_cumulative(params: Any, x: Any, xp: Any = jnp) -> Any:
  """Logit of the cumulative c(x) for channel-last `x` (..., C); `xp` is jax.numpy or numpy."""
  logits = x[..., None]
  n = _dims(params)
  for k in range(n):
    m = xp.logaddexp(0.0, xp.asarray(params[f"matrix_{k}"]))  # softplus, (C, out, in)
    logits = xp.einsum("cij,...cj->...ci", m, logits) + xp.asarray(params[f"bias_{k}"])
    if k < n - 1:
      logits = logits + xp.tanh(xp.asarray(params[f"factor_{k}"])) * xp.tanh(logits)
  return logits[..., 0]


def likelihood(params: Any, x: Any, xp: Any = jnp) -> Any:
  """P(x - 1/2 < X < x + 1/2) per element, computed stably in the tail (sign trick)."""
  lower = logits_cumulative(params, x - 0.5, xp)
  upper = logits_cumulative(params, x + 0.5, xp)
  sign = -xp.sign(lower + upper)
  sigmoid = (lambda v: jax.nn.sigmoid(v)) if xp is jnp else (lambda v: 0.5 * (1 + np.tanh(v / 2)))
  return xp.abs(sigmoid(sign * upper) - sigmoid(sign * lower))


def bits(params: Any, x_hat: jax.Array) -> jax.Array:
  """-log2 P(x_hat) per element, with a lower bound on P that still passes gradients up."""
  return -jnp.log2(quantization.lower_bound(likelihood(params, x_hat), LIKELIHOOD_BOUND))


def init_params(rng: jax.Array, channels: int, filters: Sequence[int] = (3, 3, 3),
                init_scale: float = 10.0) -> dict[str, jax.Array]:
  """Initial parameters (as in CompressAI): a density of width about `init_scale`."""
  dims = (1, *filters, 1)
  scale = init_scale ** (1.0 / (len(filters) + 1))
  params = {}
  keys = jax.random.split(rng, len(dims) - 1)
  for k in range(len(dims) - 1):
    init = np.log(np.expm1(1.0 / scale / dims[k + 1]))
    params[f"matrix_{k}"] = jnp.full((channels, dims[k + 1], dims[k]), init, jnp.float32)
    params[f"bias_{k}"] = jax.random.uniform(keys[k], (channels, dims[k + 1]), jnp.float32, -.5, .5)
    if k < len(dims) - 2:
      params[f"factor_{k}"] = jnp.zeros((channels, dims[k + 1]), jnp.float32)
  return params


def at_quality(density: Any, quality: Any) -> Any:
  """The density of one quality from a per-quality stack (every leaf with a leading Q axis)."""
  return jax.tree.map(lambda a: a[quality], density)


class EntropyBottleneck(nn.Module):
  """Flax holder of the factorized-prior parameters; the math is this file's pure functions.

  __call__(x, mode, quality) with x channel-last returns (x_hat, bits per element). Modes are those
  of `quantization.quantize`; noise comes from the "noise" rng collection. With `qualities` > 0 the
  density is a stack of one per quality and `quality` (an int or a traced index) picks it. The
  input is sown as intermediates "z" (for fitting priors after training).
  """

  filters: Sequence[int] = (3, 3, 3)
  init_scale: float = 10.0
  qualities: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, mode: str, quality: Any = 0) -> tuple[jax.Array, jax.Array]:
    def init(key):
      one = init_params(key, x.shape[-1], self.filters, self.init_scale)
      if not self.qualities:
        return one
      return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.qualities, *a.shape)), one)
    density = self.param("density", init)
    if self.qualities:
      density = at_quality(density, quality)
    self.sow("intermediates", "z", x)
    rng = self.make_rng("noise") if quantization.needs_rng(mode) else None
    x_hat, x_rate = quantization.quantize(x, mode, rng)
    return x_hat, bits(density, x_rate)


def _to_numpy64(params: Any) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _bisect(f, target: np.ndarray, iters: int = 100) -> np.ndarray:
  """Per-channel x with f(x) = target for monotone increasing f, by bracketing then bisection."""
  lo = np.full(target.shape, -1.0)
  hi = np.full(target.shape, 1.0)
  for _ in range(64):
    grow_lo, grow_hi = f(lo) > target, f(hi) < target
    if not (grow_lo.any() or grow_hi.any()):
      break
    lo = np.where(grow_lo, 2 * lo, lo)
    hi = np.where(grow_hi, 2 * hi, hi)
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    below = f(mid) < target
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  return 0.5 * (lo + hi)


def build_table(params: Any, tail_mass: float = 2**-8, precision: int = tables.PRECISION,
                max_size: int = 4096) -> tables.CDFTable:
  """One CDF row per channel over the integers between the tail quantiles (host, float64).

  The range [floor(q(tail/2)), ceil(q(1 - tail/2))] is found by bisection on the learned cumulative;
  mass outside it goes to the escape symbol.
  """
  p64 = _to_numpy64(params)
  channels = p64["bias_0"].shape[0]
  logit = lambda q: np.log(q) - np.log1p(-q)
  f = lambda x: logits_cumulative(p64, x, np)
  lo = np.floor(_bisect(f, np.full(channels, logit(tail_mass / 2))))
  hi = np.ceil(_bisect(f, np.full(channels, logit(1 - tail_mass / 2))))
  if np.any(hi - lo + 1 > max_size):
    raise ValueError(f"factorized density wider than {max_size} symbols; is the model trained?")
  sizes = (hi - lo + 1).astype(np.int64)
  grid = lo[None, :] + np.arange(sizes.max())[:, None]  # (L, C): row i holds lo[c] + i
  pmf = likelihood(p64, grid, np)
  pmfs = [pmf[:sizes[c], c] for c in range(channels)]
  offsets = [int(v) for v in lo]
  return tables.from_pmfs(pmfs, offsets, precision)


def _indexes(shape: tuple[int, ...]) -> np.ndarray:
  return np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape)


def compress(table: tables.CDFTable, x: np.ndarray) -> tuple[bytes, np.ndarray]:
  """Host: rounds channel-last `x` and range-codes it. Returns (bytes, x_hat)."""
  x = np.asarray(x)
  tables.check_finite("factorized input", x)
  if x.ndim < 1 or x.shape[-1] != table.num_rows:
    raise errors.InvalidInputError(
        f"factorized input has {x.shape[-1] if x.ndim else 0} channels, table has {table.num_rows}")
  values = np.rint(x).astype(np.int32)
  return range_coder.encode(values, _indexes(x.shape), table), values.astype(np.float32)


def decompress(table: tables.CDFTable, data: bytes, shape: Sequence[int]) -> np.ndarray:
  """Host: inverse of `compress`; returns float32 x_hat of `shape`."""
  shape = tuple(int(s) for s in shape)
  if not shape or shape[-1] != table.num_rows:
    raise errors.CorruptBitstreamError(
        f"factorized stream shape {shape} does not match a table of {table.num_rows} channels")
  return range_coder.decode(data, _indexes(shape), table).astype(np.float32)
