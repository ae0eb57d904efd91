"""MFIBA: multiscale feature importance-based bit allocation on top of the base learned codec.

Liu, Zhang, Guo, Huang, Jiang, "Multiscale Feature Importance-based Bit Allocation for End-to-End
Feature Coding for Machines", ACM TOMM 2025 (doi:10.1145/3748654, arXiv:2503.19278). Three parts:

1. MFIP (multiscale feature importance prediction): a small network maps the pyramid of one image
   to one importance weight per scale, w in (0, S)^S with sum_s w_s = S (uniform importance = 1):
     w = S * softmax(MLP([GAP(a_s); STD(a_s)]_s)),   a_s = lrelu(conv3x3/2(f_s))             (M1)
2. Task loss-rate model: per scale, the task loss of the decoded features against the rate spent
   on that scale, fitted from operating points (`fit_rate_task_model`):
     T_s(R) = a_s * exp(-b_s * R) + c_s                                                     (M2)
3. Bit allocation: minimise sum_s w_s T_s(R_s) subject to sum_s R_s = R (`allocate`, KKT:
   w_s a_s b_s exp(-b_s R_s) = mu on the scales that get bits; water-filling)               (M3)
   and, inside the learned codec, per-image per-scale quantization gains driven by w:
     log g_s = clip(beta_s + alpha * log w_s, -log G, log G),   g_s -> 8-bit table index    (M4)
     y'_s = g_s * g_a(f_s),  z_s = h_a(y'_s),  y'_s coded by the mean-scale hyperprior of z_s,
     f_hat_s = g_s(y'_hat_s / g_s)                                                          (M5)
   while training weights the per-scale distortion by the (stop-gradient) importance:
     D = mean_n sum_s w_s[n] * MSE_s[n]                                                     (M6)
   (`hssc_jax.training.loss` reads `out["distortion_weights"]`).

The base codec is the one of `hyperprior.HyperpriorCodec`: one mean-scale hyperprior per scale
(optional channel-wise context), with the same per-scale options. Streams: "<scale>/y", "<scale>/z";
the container metadata holds "allocation", the per-scale gain indexes the encoder chose (8 bits
each), which the decoder uses and `read_allocation` shows.

Port decisions: docs/port_notes.md, "MFIBA (Liu et al., ACM TOMM 2025)".
"""

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import HyperpriorCodec, HyperpriorModel
from hssc_jax.layers import conv, pad_to_multiple


# ---- gain table ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def gain_table(gain_range: float, levels: int) -> tuple[np.ndarray, np.ndarray]:
  """(gains, inverse gains), float32, log-spaced over [1/gain_range, gain_range] (M4).

  Built once in numpy so the training graph, the encoder and the decoder use bit-identical values.
  """
  log_g = np.linspace(-np.log(gain_range), np.log(gain_range), levels)
  if levels % 2:
    log_g[levels // 2] = 0.0
  gains = np.exp(log_g)
  return gains.astype(np.float32), (1.0 / gains).astype(np.float32)


def broadcast_gain(g: jax.Array) -> jax.Array:
  """Per-image gains (N,) -> (N, 1, 1, 1), to multiply NHWC latents."""
  return g[:, None, None, None]


# ---- networks ------------------------------------------------------------------------------------

class MFIP(nn.Module):
  """(M1): pyramid -> log importance (N, S), log(S * softmax(logits)); uniform at initialisation."""

  num_scales: int
  channels: int = 32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
    pooled = []
    for f in features:
      a = nn.leaky_relu(conv(self.channels, 3, 2)(f))
      # sqrt(var + eps): finite gradient on a 1x1 map (e.g. the coarsest scale of small inputs)
      pooled += [jnp.mean(a, axis=(1, 2)), jnp.sqrt(jnp.var(a, axis=(1, 2)) + 1e-6)]
    h = nn.leaky_relu(nn.Dense(self.channels)(jnp.concatenate(pooled, axis=-1)))
    logits = nn.Dense(self.num_scales, kernel_init=nn.initializers.zeros)(h)
    return jnp.log(float(self.num_scales)) + jax.nn.log_softmax(logits, axis=-1)


class GainedHyperpriorModel(HyperpriorModel):
  """`HyperpriorModel` with a per-image quantization gain (M5): the analysis output is multiplied by
  `gain` (N,) before h_a and coding, the decoded latent by `inv_gain` (N,) before g_s. Same
  parameters as `HyperpriorModel`."""

  def analyze(self, x: jax.Array, gain: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = self.apply_gain(self.g_a(pad_to_multiple(x, self.multiple))) * broadcast_gain(gain)
    return y, self.h_a(y)

  def synthesis(self, y_hat: jax.Array, inv_gain: jax.Array, height: int, width: int) -> jax.Array:
    y = self.apply_gain(y_hat * broadcast_gain(inv_gain), inverse=True)
    return self.g_s(y)[:, :height, :width, :]

  def __call__(self, x: jax.Array, mode: str, gain: jax.Array, inv_gain: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    y_hat, bits = self.quantize_and_rate(*self.analyze(x, gain), mode)
    return self.synthesis(y_hat, inv_gain, x.shape[1], x.shape[2]), bits

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def encode(self, params: Any, tables: Mapping[str, Any], x: np.ndarray, gain: np.ndarray,
             jit: bool = True
             ) -> tuple[dict[str, bytes], dict[str, tuple], dict[str, Any], np.ndarray]:
    """Host: codes one tensor with gain (1,). Returns (streams, shapes, metadata, y_hat)."""
    y, z = (np.asarray(a) for a in base.compiled(self, "analyze")(params, x, gain))
    streams, crc, y_hat = self.encode_latents(params, tables, y, z, jit)
    return streams, {"x": x.shape, "y": y.shape, "z": z.shape}, {"crc": crc}, y_hat

  @nn.nowrap
  def decode(self, params: Any, tables: Mapping[str, Any], streams: Mapping[str, bytes],
             shapes: Mapping[str, tuple], metadata: Mapping[str, Any], inv_gain: np.ndarray,
             jit: bool = True) -> np.ndarray:
    """Host: inverse of `encode` given the inverse gain (1,) from the bitstream."""
    y_hat = self.decode_latents(params, tables, streams, shapes, metadata, jit)
    x_shape = tuple(shapes["x"])
    x_hat = base.compiled(self, "synthesis", x_shape[1], x_shape[2])(params, y_hat, inv_gain)
    return np.asarray(x_hat)


# ---- the codec -----------------------------------------------------------------------------------

class MFIBACodec(HyperpriorCodec):
  """The base codec (`HyperpriorCodec`, gained scale models) + MFIP-driven per-scale gains.

  Attributes beyond the base codec's:
    mfip_channels: width of the MFIP network (M1).
    gain_range: G, gains in [1/G, G] (M4).
    gain_levels: size of the gain table (<= 256: one byte per scale in the bitstream).
    importance_exponent: alpha in (M4) during training; 0 turns the per-image allocation off.
    encode_exponent: alpha at encode time (None: `importance_exponent`), a post-training choice
      like the fitted models: it scales MFIP's log importance in (M4) and weights (M3) by w^alpha.
    budget_scale: the total rate R that (M3) splits at encode time, with fitted models, as a
      multiple of the rate MFIP's own gains (M4) would spend (1: that rate), a post-training
      rate-control choice like alpha.
    allocation_models: the fitted (M2) models and measured rate-gain curves per quality
      (`calibrate`), or None.

  `__call__(features, training)` returns features_hat, bits ("<scale>/y|z"), importance (N, S),
  gains (N, S), gain_indexes (N, S) and distortion_weights {scale: (N,)} (the stop-gradient
  importance, (M6)).
  """

  codec_id: ClassVar[str] = "mfiba"
  encoder_only: ClassVar[tuple[str, ...]] = ("encode_exponent", "budget_scale")
  model_class: ClassVar[type] = GainedHyperpriorModel
  mfip_channels: int = 32
  gain_range: float = 4.0
  gain_levels: int = 255
  importance_exponent: float = 1.0
  encode_exponent: float | None = None
  budget_scale: float = 1.0
  allocation_models: Any = None

  @nn.nowrap
  def _check_config(self) -> None:
    if not float(self.gain_range) > 1.0:
      raise errors.ConfigError(f"gain_range must be > 1, got {self.gain_range}")
    if not 2 <= int(self.gain_levels) <= 256:
      raise errors.ConfigError(
          f"gain_levels must be in [2, 256] (one byte), got {self.gain_levels}")
    if not float(self.importance_exponent) >= 0:
      raise errors.ConfigError(f"importance_exponent must be >= 0, got {self.importance_exponent}")
    if self.encode_exponent is not None and not float(self.encode_exponent) >= 0:
      raise errors.ConfigError(f"encode_exponent must be >= 0 or None, got {self.encode_exponent}")
    if not 0 < float(self.budget_scale) < np.inf:
      raise errors.ConfigError(f"budget_scale must be a number > 0, got {self.budget_scale}")
    if int(self.mfip_channels) < 1:
      raise errors.ConfigError(f"mfip_channels must be >= 1, got {self.mfip_channels}")
    for entry in self.allocation_models or ():
      for row in entry or ():
        if len(row) != 6 or row[0] not in self.scales:
          raise errors.ConfigError("allocation_models rows are (scale, a, b, c, p, q) or "
                                   f"(scale, a, b, c, gains, rates), got {row}")
        try:
          rate_gain_model(row[4], row[5])
        except errors.InvalidInputError as e:
          raise errors.ConfigError(f"allocation_models row of {row[0]!r}: {e}") from e

  @property
  def gains(self) -> tuple[np.ndarray, np.ndarray]:
    """The gain table and its inverse (float32)."""
    return gain_table(float(self.gain_range), int(self.gain_levels))

  def setup(self):
    self._check_config()
    super().setup()
    self.mfip = MFIP(len(self.scales), self.mfip_channels)
    self.log_gain_offset = self.param("log_gain_offset", nn.initializers.zeros, (len(self.scales),))

  @property
  def alpha(self) -> float:
    """The exponent (M4) of the encoder: `encode_exponent`, else the training one."""
    return float(self.importance_exponent if self.encode_exponent is None
                 else self.encode_exponent)

  def allocate_gains(self, features: base.Pyramid, alpha: float | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(M1), (M4): log importance, continuous clipped log gain and table index, each (N, S);
    alpha defaults to the training exponent."""
    log_w = self.mfip([features[s] for s in self.scales])
    lim = float(np.log(self.gain_range))
    alpha = self.importance_exponent if alpha is None else alpha
    log_g = jnp.clip(self.log_gain_offset + alpha * log_w, -lim, lim)
    step = 2 * lim / (self.gain_levels - 1)
    idx = jnp.clip(jnp.round((log_g + lim) / step), 0, self.gain_levels - 1).astype(jnp.int32)
    return log_w, log_g, idx

  def allocation_indexes(self, features: base.Pyramid) -> tuple[jax.Array, jax.Array]:
    """(importance (N, S), gain table indexes (N, S)), what the encoder sends."""
    log_w, _, idx = self.allocate_gains(features, self.alpha)
    return jnp.exp(log_w), idx

  def forward_with_indexes(self, features: base.Pyramid, idx: jax.Array
                           ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Evaluation-mode (features_hat, bits) with explicit gain table indexes (N, S)."""
    table, inv_table = self.gains
    return self._code_scales(features, "round", jnp.asarray(table)[idx],
                             jnp.asarray(inv_table)[idx])

  def _code_scales(self, features: base.Pyramid, mode: str, gain: jax.Array, inv_gain: jax.Array
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(M5) for every scale with gains (N, S): (features_hat, bits per stream)."""
    return self.code_scales(features, mode, {s: (gain[:, i], inv_gain[:, i])
                                             for i, s in enumerate(self.scales)})

  def __call__(self, features: base.Pyramid, training: bool) -> dict[str, Any]:
    mode = self.train_quantization if training else "round"
    log_w, log_g, idx = self.allocate_gains(features)
    table, inv_table = self.gains
    gain, inv_gain = jnp.asarray(table)[idx], jnp.asarray(inv_table)[idx]
    if training:  # table values forward, gradient of the continuous gain (straight-through)
      g = jnp.exp(log_g)
      gain = g + jax.lax.stop_gradient(gain - g)
      inv_gain = 1 / g + jax.lax.stop_gradient(inv_gain - 1 / g)
    out, bits = self._code_scales(features, mode, gain, inv_gain)
    importance = jnp.exp(log_w)
    weights = jax.lax.stop_gradient(importance)
    return {"features_hat": out, "bits": bits, "importance": importance, "gains": gain,
            "gain_indexes": idx, "distortion_weights": {s: weights[:, i]
                                                        for i, s in enumerate(self.scales)}}

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def allocation(self, params: Any, features: base.Pyramid) -> dict[str, dict[str, np.ndarray]]:
    """Host: the allocation MFIP chooses, per scale {"importance", "gain", "index"}, each (N,)."""
    feats = base.check_pyramid(features, self.scales)
    importance, idx = (np.asarray(a) for a in
                       base.compiled(self, "allocation_indexes")(params, feats))
    table = self.gains[0]
    return {s: {"importance": importance[:, i], "gain": table[idx[:, i]], "index": idx[:, i]}
            for i, s in enumerate(self.scales)}

  @nn.nowrap
  def gain_indexes(self, gains: Mapping[str, float]) -> list[int]:
    """Nearest table indexes of explicit per-scale gains (for `compress_with_gains`)."""
    if not isinstance(gains, Mapping) or sorted(gains) != sorted(self.scales):
      raise errors.InvalidInputError(f"gains must map each of {list(self.scales)} to a gain")
    log_table = np.log(self.gains[0].astype(np.float64))
    out = []
    for s in self.scales:
      g = float(gains[s])
      if not (np.isfinite(g) and 1 / self.gain_range * (1 - 1e-6) <= g
              <= self.gain_range * (1 + 1e-6)):
        raise errors.InvalidInputError(
            f"gain {g} for {s!r} is outside [1/{self.gain_range}, {self.gain_range}]")
      out.append(int(np.argmin(np.abs(log_table - np.log(g)))))
    return out

  @nn.nowrap
  def compress_with_gains(self, params: Any, tables: Any, features: base.Pyramid,
                          image_size: Sequence[int], gains: Mapping[str, float]) -> bytes:
    """Host: `compress` with per-scale gains chosen outside the model (e.g. by `allocate` and
    `RateGainCurve.gain`) instead of MFIP's; they are rounded to the table and sent as usual."""
    return self.compress(params, tables, features, image_size, gains=gains)

  @nn.nowrap
  def compress_streams(self, params, tables, features, gains: Mapping[str, float] | None = None):
    """Streams "<scale>/y|z" at the gains of `choose_indexes` (or at explicit `gains`); metadata
    "allocation", the gain table index of each scale."""
    if gains is not None:
      indexes = self.gain_indexes(gains)
    else:
      importance, idx = (np.asarray(a)[0] for a in
                         base.compiled(self, "allocation_indexes")(params, features))
      indexes = self.choose_indexes(importance, idx)
    streams, shapes, meta = self.streams_at(params, tables, features, indexes)
    return streams, shapes, {"allocation": list(indexes), **meta}

  @nn.nowrap
  def streams_at(self, params, tables, features, indexes: Sequence[int]):
    """Host: (streams, shapes, metadata) of every scale coded at its gain table index."""
    table = self.gains[0]
    gains = {s: (table[i:i + 1],) for i, s in zip(indexes, self.scales)}
    return HyperpriorCodec.compress_streams(self, params, tables, features, gains)

  @nn.nowrap
  def features_at(self, params, tables, streams, shapes, metadata, indexes: Sequence[int]):
    """Host: the decoded scales of `streams_at`'s output, given the same indexes."""
    inv_table = self.gains[1]
    inv_gains = {s: (inv_table[i:i + 1],) for i, s in zip(indexes, self.scales)}
    return HyperpriorCodec.decompress_streams(self, params, tables, streams, shapes, metadata,
                                              inv_gains)

  @nn.nowrap
  def post_training_constants(self, params: Any, batches: Sequence[base.Pyramid], pixels: float,
                              task_fn: Any) -> dict[str, Any]:
    """Codec fields fitted after training (train_lib calls this): the allocation models."""
    return {"allocation_models": calibrate(self, params, batches, pixels, task_fn,
                                           self.denormalize)}

  @nn.nowrap
  def fitted_models(self) -> dict | None:
    """This quality's (M2) task loss-rate and rate-gain models (`calibrate`), or None."""
    if not self.allocation_models:
      return None
    q = int(self.quality) if self.qualities else 0
    entry = self.allocation_models[q] if q < len(self.allocation_models) else None
    if not entry:
      return None
    return {s: (TaskRateModel(a, b, c), rate_gain_model(p, rq)) for s, a, b, c, p, rq in entry}

  @nn.nowrap
  def choose_indexes(self, importance: np.ndarray, idx: np.ndarray) -> list[int]:
    """Encode-time allocation of one image: with fitted models, (M3) splits the budget (the rate
    MFIP's own gains would spend, from the rate-gain curves, times `budget_scale`) across scales
    by task loss-rate models weighted by w^alpha (`alpha`), no scale below its rate at the lowest
    gain, and turns each scale's rate into its gain; else MFIP's gains (M4)."""
    models = self.fitted_models()
    if models is None:
      return [int(i) for i in idx]
    table = self.gains[0]
    budget = float(self.budget_scale) * sum(float(models[s][1](table[i]))
                                            for s, i in zip(self.scales, idx))
    # Each scale costs at least its rate at the lowest gain (side information, an all-zero y):
    # (M3) splits what the budget leaves above these floors, on (M2) shifted to start there.
    floor = {s: m.floor(self.gain_range) for s, (_, m) in models.items()}
    above = allocate({s: TaskRateModel(m.a * float(np.exp(-m.b * floor[s])), m.b, m.c)
                      for s, (m, _) in models.items()},
                     {s: float(w) ** self.alpha for s, w in zip(self.scales, importance)},
                     max(budget - sum(floor.values()), 0.0))
    gains = {s: models[s][1].gain(floor[s] + above[s], self.gain_range) for s in self.scales}
    return self.gain_indexes(gains)

  @nn.nowrap
  def _allocation_from(self, metadata: Mapping[str, Any]) -> list[int]:
    base.require(metadata, ["allocation"], "metadata")
    a = metadata["allocation"]
    if (not isinstance(a, list) or len(a) != len(self.scales)
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.gain_levels
                   for i in a)):
      raise errors.CorruptBitstreamError(f"bitstream metadata 'allocation' is malformed: {a!r}")
    return a

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    return self.features_at(params, tables, streams, shapes, metadata,
                            self._allocation_from(metadata))

  @nn.nowrap
  def read_allocation(self, params: Any, tables: Any, data: bytes) -> dict[str, dict[str, float]]:
    """Host: the allocation stored in a bitstream, {scale: {"index", "gain"}} (the container is
    checked for integrity and for this model's fingerprint)."""
    c = self.unpack(params, tables, data)
    table = self.gains[0]
    return {s: {"index": i, "gain": float(table[i])}
            for s, i in zip(self.scales, self._allocation_from(c.metadata))}


# ---- task loss-rate model and bit allocation (host, numpy) ---------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskRateModel:
  """(M2): T(R) = a * exp(-b * R) + c, R in the rate unit of the fitted points (e.g. bpp)."""

  a: float
  b: float
  c: float

  def __call__(self, rate: Any) -> np.ndarray:
    return self.a * np.exp(-self.b * np.asarray(rate, np.float64)) + self.c

  def slope(self, rate: Any) -> np.ndarray:
    """-dT/dR, the task-loss reduction per extra unit of rate."""
    return self.a * self.b * np.exp(-self.b * np.asarray(rate, np.float64))


def _points(x: Any, y: Any, what: str, minimum: int) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape or x.size < minimum:
    raise errors.InvalidInputError(f"{what} needs >= {minimum} matching points, got {x.size} "
                                   f"and {y.size}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise errors.InvalidInputError(f"{what} points hold NaN/inf")
  if np.ptp(x) <= 0:
    raise errors.InvalidInputError(f"{what} needs at least two distinct rates")
  return x, y


def fit_rate_task_model(rates: Any, task_losses: Any) -> TaskRateModel:
  """Least-squares fit of (M2) to one scale's operating points (>= 3 points).

  Variable projection: for a given decay b the best (a, c) are linear least squares; b > 0 is then
  found by a bounded search over log b (grid, then Brent refinement).
  """
  r, t = _points(rates, task_losses, "fit_rate_task_model", 3)
  span = np.ptp(r)

  def solve(log_b):
    e = np.exp(-np.exp(log_b) * (r - r.min()))
    coef, *_ = np.linalg.lstsq(np.stack([e, np.ones_like(e)], 1), t, rcond=None)
    return coef, float(np.sum((coef[0] * e + coef[1] - t) ** 2))

  grid = np.linspace(np.log(1e-3 / span), np.log(1e3 / span), 121)
  errs = [solve(g)[1] for g in grid]
  k = int(np.argmin(errs))
  lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
  log_b = scipy.optimize.minimize_scalar(lambda g: solve(g)[1], bounds=(lo, hi),
                                         method="bounded").x if hi > lo else grid[k]
  (a, c), _ = solve(log_b)
  b = float(np.exp(log_b))
  return TaskRateModel(float(a * np.exp(b * r.min())), b, float(c))  # undo the shift to r.min()


def allocate(models: Mapping[str, TaskRateModel], importance: Mapping[str, float] | Sequence[float],
             total_rate: float) -> dict[str, float]:
  """(M3): per-scale rates R_s >= 0 with sum R_s = total_rate minimising sum_s w_s T_s(R_s).

  KKT: w_s a_s b_s exp(-b_s R_s) = mu where R_s > 0, so R_s = max(0, log(w_s a_s b_s / mu) / b_s);
  on the set A of scales with R_s > 0, log mu = (sum_A log(w_s a_s b_s) / b_s - R) / sum_A 1 / b_s
  in closed form, and A is found by water-filling. Scales whose task loss does not fall with rate
  (w_s a_s b_s <= 0) get no rate.
  """
  names = list(models)
  if isinstance(importance, Mapping):
    if sorted(importance) != sorted(names):
      raise errors.InvalidInputError(f"importance scales {sorted(importance)} != models {names}")
    importance = [importance[s] for s in names]
  w = np.asarray(importance, np.float64).ravel()
  if w.size != len(names):
    raise errors.InvalidInputError(f"{w.size} importance weights for {len(names)} scales")
  total = float(total_rate)
  if not np.isfinite(total) or total < 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
    raise errors.InvalidInputError(f"need total_rate >= 0 and importance >= 0, got {total_rate}, "
                                   f"{w.tolist()}")
  a = np.array([models[s].a for s in names])
  b = np.array([models[s].b for s in names])
  if np.any(b <= 0):
    raise errors.InvalidInputError("task loss-rate models need a decay b > 0")
  gain = w * a * b
  active = gain > 0
  if total == 0 or not np.any(active):
    out = np.zeros(len(names))
    if total > 0:  # nothing helps: spread evenly
      out[:] = total / len(names)
    return dict(zip(names, out.tolist()))
  log_gain = np.log(np.where(active, gain, 1.0))
  while True:  # water-filling: closed form on the active set, drop scales that would go negative
    log_mu = (np.sum(log_gain[active] / b[active]) - total) / np.sum(1 / b[active])
    out = np.where(active, (log_gain - log_mu) / b, 0.0)
    if np.all(out >= 0):
      break
    active &= out > 0  # mu only grows as scales drop, so a dropped scale never returns
  return dict(zip(names, out.tolist()))


@dataclasses.dataclass(frozen=True)
class RateGainModel:
  """Rate of one scale against its quantization gain: R(g) = p + q * log2(g) (high-rate theory:
  doubling the gain adds about one bit per latent element). The rate -> gain mapping of models
  calibrated before `RateGainCurve`, which replaced it (this line misses the low-rate floor)."""

  p: float
  q: float

  def __call__(self, gain: Any) -> np.ndarray:
    return self.p + self.q * np.log2(np.asarray(gain, np.float64))

  def floor(self, gain_range: float) -> float:  # pylint: disable=unused-argument
    """No floor: the line goes below zero at low gains, and the files that hold one keep the
    allocation they were chosen with."""
    return 0.0

  def gain(self, rate: float, gain_range: float | None = None) -> float:
    g = float(2.0 ** ((rate - self.p) / self.q))
    return g if gain_range is None else float(np.clip(g, 1 / gain_range, gain_range))


def fit_rate_gain_model(gains: Any, rates: Any) -> RateGainModel:
  """Least-squares fit of `RateGainModel` to (gain, rate) operating points of one scale."""
  g, r = _points(gains, rates, "fit_rate_gain_model", 2)
  if np.any(g <= 0):
    raise errors.InvalidInputError("gains must be positive")
  q, p = np.polyfit(np.log2(g), r, 1)
  if q <= 0:
    raise errors.InvalidInputError(f"rate does not grow with the gain (slope {q:.3g})")
  return RateGainModel(float(p), float(q))


@dataclasses.dataclass(frozen=True)
class RateGainCurve:
  """Rate of one scale against its gain, measured at a few gains and interpolated linearly in
  (log2 g, log R): a piecewise power law, exact at the measured gains, clipped flat outside them.

  The straight line of `RateGainModel` misses the convex shape of the measured curve (a floor of
  side information where y is nearly empty, then about one bit per element per doubling): fitted
  over [1/4, 4] it overstated the zoo MFIBA's rates at gain 1 by 2.3-4.7x at quality 0 (1.1-1.6x
  at quality 2), so the budget of (M3) was that much too large at the low qualities.
  """

  gains: tuple[float, ...]
  rates: tuple[float, ...]

  def __post_init__(self):
    g, r = _points(self.gains, self.rates, "RateGainCurve", 2)
    if np.any(g <= 0) or np.any(r <= 0) or np.any(np.diff(g) <= 0):
      raise errors.InvalidInputError("a rate-gain curve needs increasing positive gains and "
                                     "positive rates")
    if r[-1] <= r[0]:
      raise errors.InvalidInputError("rate does not grow with the gain")

  @property
  def _log(self) -> tuple[np.ndarray, np.ndarray]:
    r = np.maximum.accumulate(np.asarray(self.rates, np.float64))  # non-decreasing
    return np.log2(np.asarray(self.gains, np.float64)), np.log(r)

  def __call__(self, gain: Any) -> np.ndarray:
    lg, lr = self._log
    return np.exp(np.interp(np.log2(np.asarray(gain, np.float64)), lg, lr))

  def floor(self, gain_range: float) -> float:
    """The rate at the lowest gain 1/gain_range: side information and a (nearly) all-zero y."""
    return float(self(1 / gain_range))

  def gain(self, rate: float, gain_range: float | None = None) -> float:
    """The largest gain whose rate is at most `rate` (on a flat stretch more gain costs nothing)."""
    lg, lr = self._log
    keep = np.append(lr[1:] > lr[:-1], True)  # the last gain of each flat stretch
    lg, lr = lg[keep], lr[keep]
    g = float(2.0 ** np.interp(np.log(max(float(rate), 1e-30)), lr, lg))
    return g if gain_range is None else float(np.clip(g, 1 / gain_range, gain_range))


def rate_gain_model(p: Any, q: Any) -> RateGainModel | RateGainCurve:
  """The rate-gain model of an `allocation_models` row: a measured curve (gains, rates), or the
  straight line (p, q) of models calibrated before the curve (kept so their files still load)."""
  try:
    if np.ndim(p) == 0 and np.ndim(q) == 0:
      p, q = float(p), float(q)
      if not (np.isfinite(p) and np.isfinite(q) and q > 0):
        raise errors.InvalidInputError(f"a rate-gain line needs a finite slope > 0, got {p}, {q}")
      return RateGainModel(p, q)
    return RateGainCurve(tuple(float(x) for x in p), tuple(float(x) for x in q))
  except (TypeError, ValueError) as e:
    raise errors.InvalidInputError(f"a rate-gain model is a line (p, q) or a curve (gains, "
                                   f"rates) of numbers, got {p!r}, {q!r}") from e


def calibrate(codec: MFIBACodec, params: Any, batches: Sequence[base.Pyramid], pixels: float,
              task_fn: Any, denormalize: Any, gains: Sequence[float] | None = None) -> tuple:
  """Fits (M2) and measures the rate-gain curve of every scale, for every quality, on training
  features.

  For each quality, batch (normalized features), scale s and gain g of `gains` (default 5 values
  spread over [1/G, G]), scale s is coded at g (the others at MFIP's gains) and its rate and the
  task loss with only s decoded are measured in evaluation mode. The task loss of s is that of the
  detections s feeds (`loss.task_distortion` over the head outputs that decoding s changes), so a
  scale is not weighted by its number of head cells (P3 has 16x P5's): with the loss over all
  outputs, (M3) moved bits to P3 that cost P4 more accuracy than P3 gained. Returns
  the `allocation_models` field: one tuple of (scale, a, b, c, gains, rates) rows per quality
  (the measured `RateGainCurve`), or None for a quality whose points cannot be fitted (then
  `choose_indexes` keeps MFIP's gains)."""
  from hssc_jax.training import loss as loss_lib  # pylint: disable=g-import-not-at-top
  if gains is None:
    gains = np.geomspace(1 / codec.gain_range, codec.gain_range, 5)
  grid = sorted(float(g) for g in gains)
  g_idx = {g: codec.gain_indexes({t: g for t in codec.scales})[0] for g in grid}  # table index
  out = []
  for q in range(max(int(codec.qualities), 1)):
    model = codec.clone(quality=q, allocation_models=None) if codec.qualities else codec
    fwd = base.compiled(model, "forward_with_indexes")
    alloc = base.compiled(model, "allocation_indexes")
    rates = {s: {g: [] for g in grid} for s in codec.scales}
    tasks = {s: {g: [] for g in grid} for s in codec.scales}
    for feats in batches:
      ref = task_fn(denormalize(feats))
      _, idx = alloc(params, feats)
      idx = np.asarray(idx)
      for i, s in enumerate(codec.scales):
        fed = None  # the head outputs scale s feeds: those its coarsest decoding changes
        for g in sorted(grid):
          k = idx.copy()
          k[:, i] = g_idx[g]
          hat, bits = fwd(params, feats, jnp.asarray(k))
          head = task_fn(denormalize(dict(feats, **{s: hat[s]})))
          if fed is None:
            fed = np.any(np.asarray(head) != np.asarray(ref), axis=-1)
            fed = fed if fed.any() else np.ones_like(fed)
          rates[s][g].append(float(np.mean(bits[f"{s}/y"] + bits[f"{s}/z"])) / pixels)
          tasks[s][g].append(float(loss_lib.task_distortion(ref, head, fed)))
    rows = []
    try:
      for s in codec.scales:
        r = [np.mean(rates[s][g]) for g in grid]
        t = [np.mean(tasks[s][g]) for g in grid]
        tr = fit_rate_task_model(r, t)
        curve = RateGainCurve(tuple(float(g) for g in grid), tuple(float(x) for x in r))
        if tr.b <= 0 or tr.a <= 0:
          raise errors.InvalidInputError(f"task loss of {s} does not fall with rate")
        rows.append((s, tr.a, tr.b, tr.c, curve.gains, curve.rates))
      out.append(tuple(rows))
    except errors.InvalidInputError:
      out.append(None)
  return tuple(out)
