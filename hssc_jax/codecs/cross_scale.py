"""The base codec with cross-scale conditioning: each scale's hyperprior conditioned on the latent
of the next finer scale, decoded first.

The per-scale base codec (`hyperprior.HyperpriorCodec`) codes P3, P4 and P5 independently, but in
YOLOv5's PAN neck P4 and P5 are computed from P3 (and P5 from P4) through stride-2 convolutions, so
most of what the coarse scales carry is already in the finer ones. Here the scales are coded fine to
coarse (P3, P4, P5); scale s gets the decoded latent of scale s-1, brought onto its latent grid by
`levels` stride-2 convolutions (`ScaleCondition`), and uses it three ways:

  y_s = G_s * (g_a(f_s) + A(c))                       analysis sees what the decoder will know
  (mu, sigma) = h_s(z_hat_s) + G_s * (M(c), S(c))     conditional entropy model (means and scales)
  f_hat_s = g_s(y_hat_s / G_s + B(c))                 synthesis completes from the finer scale

with c = ScaleCondition(y_hat_{s-1} / G_{s-1}) and G the quality's gain vector (Cui et al. 2021),
learned here as plain per-quality multipliers so the entropy-parameter path needs no exp (it runs
in float64 on the host, `determinism.HostFunction`, where the coder's indexes are set). A, M, S, B
start at zero, so a model warm-started from the per-scale base codec starts as that codec.

With `coarse_to_fine` the order is reversed (P5, P4, P3): each scale is conditioned on the coarser
one, brought up by stride-2 transposed convolutions, so the large P3 can be mostly predicted from
what the small scales carry, as L-MFC's MFCNet predicts it (Liu et al., ICASSP 2023).

This is conditional coding (the latent's entropy model conditioned on already decoded information),
the device of the HSC paper (core latent first, then the feature latent conditioned on it) applied
across the pyramid's scales; it keeps one stream per scale, so per-scale bit allocation still applies.
Streams: "<scale>/y", "<scale>/z" per scale, decoded in the order of `scales`.
"""

from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import HyperpriorCodec, HyperpriorModel, gain_init, model_from
from hssc_jax.codecs.mfiba import GainedHyperpriorModel, MFIBACodec, broadcast_gain
from hssc_jax.layers import conv, deconv, pad_to_multiple


def crop_or_pad(x: jax.Array, h: int, w: int) -> jax.Array:
  """NHWC x on an (h, w) grid sharing its top-left corner: cropped, or zero-padded bottom/right."""
  x = x[:, :h, :w, :]
  return jnp.pad(x, ((0, 0), (0, h - x.shape[1]), (0, w - x.shape[2]), (0, 0)))


def _exp_gain(qualities: int, inverse: bool = False):
  init = gain_init(qualities, inverse)
  return lambda key, shape, dtype=jnp.float32: jnp.exp(init(key, shape, dtype))


class ScaleCondition(nn.Module):
  """Maps the decoded latent of the scale coded before onto this scale's latent grid (`levels`
  stride-2 convolutions down, or -`levels` stride-2 transposed convolutions up) and returns the
  offsets (analysis, means, scales, synthesis), each (N, h, w, latent); the heads start at zero."""

  hidden: int
  latent: int
  levels: int
  qualities: int = 0

  @nn.compact
  def __call__(self, prev: jax.Array, quality: Any, h: int, w: int) -> tuple[jax.Array, ...]:
    if self.qualities:  # undo the finer scale's gain (its init), then learned per quality
      prev = prev * self.param("in_gain", _exp_gain(self.qualities, inverse=True),
                               (self.qualities, prev.shape[-1]))[quality]
    x = prev
    for _ in range(self.levels):
      x = nn.leaky_relu(conv(self.hidden, 3, 2)(x))
    for _ in range(-self.levels):
      x = nn.leaky_relu(deconv(self.hidden, 3, 2)(x))
    x = nn.leaky_relu(conv(self.hidden, 3)(crop_or_pad(x, h, w)))
    x = nn.leaky_relu(conv(self.hidden, 3)(x))
    heads = conv(4 * self.latent, 3, name="heads", kernel_init=nn.initializers.zeros)(x)
    a, mu, sigma, b = jnp.split(heads, 4, axis=-1)
    if self.qualities:  # into the gained domain of this scale's y (its gain's init, then learned)
      out = self.param("out_gain", _exp_gain(self.qualities), (self.qualities, self.latent))
      mu, sigma = mu * out[quality], sigma * out[quality]
    return a, mu, sigma, b


class ConditionalHyperpriorModel(HyperpriorModel):
  """`HyperpriorModel` conditioned on `prev`, the decoded (gained) latent of the next finer scale;
  `levels` stride-2 steps take that latent's grid to this one's. Same parameters plus
  `condition`."""

  levels: int = 0
  condition_hidden: int = 64

  def setup(self):
    super().setup()
    self.condition = ScaleCondition(self.condition_hidden, self.latent_channels, self.levels,
                                    self.qualities)

  def offsets(self, prev: jax.Array, h: int, w: int) -> tuple[jax.Array, ...]:
    return self.condition(prev, self.quality, h, w)

  def latent(self, x: jax.Array, prev: jax.Array) -> jax.Array:
    """y = G * (g_a(f) + A(c)): the analysis plus the condition's offset, times the quality's
    gain vector G."""
    y = self.g_a(pad_to_multiple(x, self.multiple))
    return self.apply_gain(y + self.offsets(prev, *y.shape[1:3])[0])

  def analyze(self, x: jax.Array, prev: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = self.latent(x, prev)
    return y, self.h_a(y)

  def hyper_synthesis(self, z_hat: jax.Array, prev: jax.Array) -> tuple[jax.Array, jax.Array]:
    means, scales = super().hyper_synthesis(z_hat)
    _, mu, sigma, _ = self.offsets(prev, *means.shape[1:3])
    return means + mu, scales + sigma

  def synthesis(self, y_hat: jax.Array, prev: jax.Array, height: int, width: int) -> jax.Array:
    y = self.apply_gain(y_hat, inverse=True)
    y = y + self.offsets(prev, *y.shape[1:3])[3]
    return self.g_s(y)[:, :height, :width, :]

  def __call__(self, x: jax.Array, mode: str, prev: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """(x_hat, {"y": bits per image, "z": ...}, y_hat)."""
    y_hat, bits = self.quantize_and_rate(*self.analyze(x, prev), mode, hyper_args=(prev,))
    return self.synthesis(y_hat, prev, x.shape[1], x.shape[2]), bits, y_hat

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def encode(self, params: Any, tables: Mapping[str, Any], x: np.ndarray, *condition: np.ndarray,
             jit: bool = True
             ) -> tuple[dict[str, bytes], dict[str, tuple], dict[str, Any], np.ndarray]:
    """Host: streams, shapes, metadata and y_hat of `x` given `condition` (`prev`, and whatever
    else `analyze` and `hyper_synthesis` take after it)."""
    y, z = (np.asarray(a) for a in base.compiled(self, "analyze")(params, x, *condition))
    streams, crc, y_hat = self.encode_latents(params, tables, y, z, jit, hyper_args=condition)
    return streams, {"x": x.shape, "y": y.shape, "z": z.shape}, {"crc": crc}, y_hat

  @nn.nowrap
  def decode(self, params: Any, tables: Mapping[str, Any], streams: Mapping[str, bytes],
             shapes: Mapping[str, tuple], metadata: Mapping[str, Any], *condition: np.ndarray,
             synthesis_args: tuple | None = None, jit: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """Host: (x_hat, y_hat), the inverse of `encode` given the same `condition`; `synthesis` reads
    `synthesis_args` (default: the condition) after y_hat."""
    y_hat = self.decode_latents(params, tables, streams, shapes, metadata, jit,
                                hyper_args=condition)
    x_shape = tuple(shapes["x"])
    x_hat = base.compiled(self, "synthesis", x_shape[1], x_shape[2])(
        params, y_hat, *(condition if synthesis_args is None else synthesis_args))
    return np.asarray(x_hat), y_hat


def latent_stride(scale: str, stages: int) -> int:
  """Stride of a scale's latent in input pixels: 2^k for a pyramid level "p<k>", times 2^stages."""
  if len(scale) < 2 or scale[0] != "p" or not scale[1:].isdigit():
    raise errors.ConfigError(f"cross-scale coding needs pyramid levels named p<k>, got {scale!r}")
  return 2 ** (int(scale[1:]) + max(int(stages), 0))


def coding_order(codec: HyperpriorCodec) -> list[str]:
  """The scales in the order they are coded: `scales` as given, reversed with `coarse_to_fine`."""
  scales = list(codec.scales)
  return scales[::-1] if codec.coarse_to_fine else scales


def condition_levels(codec: HyperpriorCodec) -> dict[str, int]:
  """{scale: stride-2 steps from the latent grid of the scale coded before it} for every scale of
  `codec` but the first coded; negative steps go up (coarse to fine). ConfigError unless each
  latent stride is a power-of-two multiple of the previous one, growing fine to coarse."""
  scales, order = list(codec.scales), coding_order(codec)
  strides = {s: latent_stride(s, codec.scale_options(s)["stages"]) for s in scales}
  for fine, coarse in zip(scales, scales[1:]):
    a, b = strides[fine], strides[coarse]
    if b < a or b % a:
      raise errors.ConfigError(
          f"cross-scale coding needs scales fine to coarse: latent stride of {coarse!r} ({b}) is "
          f"not a multiple of {fine!r}'s ({a})")
  levels = {}
  for prev, s in zip(order, order[1:]):
    levels[s] = int(round(np.log2(strides[s] / strides[prev])))
  return levels


def scale_model_of(codec: HyperpriorCodec, scale: str, first: type, conditioned: type
                   ) -> HyperpriorModel:
  """The model of one scale of a cross-scale codec: a `first` for the scale coded first, a
  `conditioned` one with its `condition_levels` and the codec's `condition_hidden` for the others."""
  out_channels = list(codec.channels)[list(codec.scales).index(scale)]
  if scale == coding_order(codec)[0]:
    return model_from(codec, out_channels, first, **codec.scale_options(scale))
  return model_from(codec, out_channels, conditioned, **codec.scale_options(scale),
                    levels=condition_levels(codec)[scale],
                    condition_hidden=int(codec.condition_hidden))


class CrossScaleCodec(HyperpriorCodec):
  """The per-scale base codec with each scale conditioned on the finer one (module doc), or with
  `coarse_to_fine` on the coarser one: P5 first, P4 given P5, P3 given P4, the order in which
  L-MFC (Liu et al., ICASSP 2023) codes the small scales and predicts the large ones from them.

  `scales` must run fine to coarse (p3, p4, p5) with latent strides that never shrink.
  """

  codec_id: ClassVar[str] = "cross_scale"
  added_fields: ClassVar[tuple[str, ...]] = HyperpriorCodec.added_fields + ("coarse_to_fine",)
  condition_hidden: int = 64
  coarse_to_fine: bool = False

  @nn.nowrap
  def scale_model(self, scale: str) -> HyperpriorModel:
    return scale_model_of(self, scale, HyperpriorModel, ConditionalHyperpriorModel)

  def setup(self):
    self.check_fields()
    condition_levels(self)
    self.models = {s: self.scale_model(s) for s in self.scales}

  def code_scales(self, features: base.Pyramid, mode: str, scale_args=None
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    out, bits, prev = {}, {}, None
    for s in coding_order(self):
      x, m = features[s], self.models[s]
      if prev is None:
        prev, b = m.quantize_and_rate(*m.analyze(x), mode)
        out[s] = m.synthesis(prev, x.shape[1], x.shape[2])
      else:
        out[s], b, prev = m(x, mode, prev)
      bits.update({f"{s}/{k}": v for k, v in b.items()})
    return out, bits

  @nn.nowrap
  def compress_streams(self, params, tables, features, scale_args=None):
    coded, prev = base.Coded(), None
    for s in coding_order(self):
      args = () if prev is None else (prev,)
      prev = coded.add(s, *self.scale_model(s).encode(params[f"models_{s}"], tables[s],
                                                      features[s], *args))
    return coded.astuple()

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata, scale_args=None):
    out, prev = {}, None
    for s in coding_order(self):
      model, p, part = self.scale_model(s), params[f"models_{s}"], base.part(s, streams, shapes,
                                                                              metadata)
      if prev is None:
        prev = model.decode_latents(p, tables[s], *part)
        x_shape = tuple(part[1]["x"])
        out[s] = np.asarray(base.compiled(model, "synthesis", x_shape[1], x_shape[2])(p, prev))
      else:
        out[s], prev = model.decode(p, tables[s], *part, prev)
    return out


# ---- MFIBA's per-image gains on the cross-scale codec ------------------------------------------

class GainedConditionalHyperpriorModel(ConditionalHyperpriorModel):
  """`ConditionalHyperpriorModel` with MFIBA's per-image quantization gain (M5 of
  `hssc_jax.codecs.mfiba`): y = g * G * (g_a(f) + A(c)), the condition's entropy offsets scaled by
  g, the synthesis reading y_hat / g. `prev` is the finer scale's decoded latent with its own
  per-image gain divided out, so the condition sees the domain it had without MFIBA (gains of 1
  give exactly the `ConditionalHyperpriorModel`)."""

  def analyze(self, x: jax.Array, prev: jax.Array, gain: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    y = self.latent(x, prev) * broadcast_gain(gain)
    return y, self.h_a(y)

  def hyper_synthesis(self, z_hat: jax.Array, prev: jax.Array, gain: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    means, scales = HyperpriorModel.hyper_synthesis(self, z_hat)
    _, mu, sigma, _ = self.offsets(prev, *means.shape[1:3])
    g = broadcast_gain(gain).astype(mu.dtype)
    return means + g * mu, scales + g * sigma

  def synthesis(self, y_hat: jax.Array, prev: jax.Array, inv_gain: jax.Array, height: int,
                width: int) -> jax.Array:
    return super().synthesis(y_hat * broadcast_gain(inv_gain), prev, height, width)

  def __call__(self, x: jax.Array, mode: str, prev: jax.Array, gain: jax.Array,
               inv_gain: jax.Array) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """(x_hat, {"y": bits per image, "z": ...}, y_hat / gain: what conditions the next scale)."""
    y_hat, bits = self.quantize_and_rate(*self.analyze(x, prev, gain), mode,
                                         hyper_args=(prev, gain))
    return (self.synthesis(y_hat, prev, inv_gain, x.shape[1], x.shape[2]), bits,
            y_hat * broadcast_gain(inv_gain))

  @nn.nowrap
  def decode(self, params: Any, tables: Mapping[str, Any], streams: Mapping[str, bytes],
             shapes: Mapping[str, tuple], metadata: Mapping[str, Any], prev: np.ndarray,
             gain: np.ndarray, inv_gain: np.ndarray, jit: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """Host: (x_hat, y_hat), the inverse of `encode(params, tables, x, prev, gain)`."""
    return super().decode(params, tables, streams, shapes, metadata, prev, gain,
                          synthesis_args=(prev, inv_gain), jit=jit)


class CrossScaleMFIBACodec(MFIBACodec):
  """MFIBA (`hssc_jax.codecs.mfiba`: MFIP importance, per-image per-scale gains, the task loss-rate
  allocation) on the cross-scale base codec (`CrossScaleCodec`) instead of the per-scale one.

  Each scale's gain scales its latent; the next scale is conditioned on the decoded latent with
  that gain divided out (`coarse_to_fine` as in `CrossScaleCodec`). The allocation models are
  calibrated as for MFIBA, scale by scale with the others at MFIP's gains; they see a scale's own
  rate, not what its gain does to the coarser scales' conditional rates. With gains of 1 and zero
  MFIP logits (its initialisation), a model warm-started from a `CrossScaleCodec` starts as that
  codec.
  """

  codec_id: ClassVar[str] = "mfiba_cross"
  added_fields: ClassVar[tuple[str, ...]] = MFIBACodec.added_fields + ("coarse_to_fine",)
  condition_hidden: int = 64
  coarse_to_fine: bool = False

  @nn.nowrap
  def scale_model(self, scale: str) -> HyperpriorModel:
    return scale_model_of(self, scale, GainedHyperpriorModel, GainedConditionalHyperpriorModel)

  def setup(self):
    condition_levels(self)
    super().setup()

  def code_scales(self, features: base.Pyramid, mode: str, scale_args=None
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(features_hat, bits); `scale_args` {scale: (gain (N,), inverse gain (N,))}, required."""
    out, bits, prev = {}, {}, None
    for s in coding_order(self):
      x, m, (gain, inv_gain) = features[s], self.models[s], scale_args[s]
      if prev is None:
        y_hat, b = m.quantize_and_rate(*m.analyze(x, gain), mode)
        out[s] = m.synthesis(y_hat, inv_gain, x.shape[1], x.shape[2])
        prev = y_hat * broadcast_gain(inv_gain)
      else:
        out[s], b, prev = m(x, mode, prev, gain, inv_gain)
      bits.update({f"{s}/{k}": v for k, v in b.items()})
    return out, bits

  @nn.nowrap
  def streams_at(self, params, tables, features, indexes: Sequence[int]):
    table, inv_table = self.gains
    coded, prev, index = base.Coded(), None, dict(zip(self.scales, indexes))
    for s in coding_order(self):
      i = index[s]
      model, gain = self.scale_model(s), table[i:i + 1]
      args = (features[s], gain) if prev is None else (features[s], prev, gain)
      y_hat = coded.add(s, *model.encode(params[f"models_{s}"], tables[s], *args))
      prev = np.asarray(y_hat) * inv_table[i]
    return coded.astuple()

  @nn.nowrap
  def features_at(self, params, tables, streams, shapes, metadata, indexes: Sequence[int]):
    table, inv_table = self.gains
    out, prev, index = {}, None, dict(zip(self.scales, indexes))
    for s in coding_order(self):
      i = index[s]
      model, p = self.scale_model(s), params[f"models_{s}"]
      part = base.part(s, streams, shapes, metadata)
      gain, inv_gain = table[i:i + 1], inv_table[i:i + 1]
      if prev is None:
        y_hat = model.decode_latents(p, tables[s], *part)
        x_shape = tuple(part[1]["x"])
        out[s] = np.asarray(base.compiled(model, "synthesis", x_shape[1], x_shape[2])(
            p, y_hat, inv_gain))
      else:
        out[s], y_hat = model.decode(p, tables[s], *part, prev, gain, inv_gain)
      prev = np.asarray(y_hat) * inv_table[i]
    return out
