"""The base learned codec: a mean-scale hyperprior per scale of the feature pyramid.

Minnen, Balle, Toderici, "Joint autoregressive and hierarchical priors for learned image
compression", NeurIPS 2018 (the mean-scale hyperprior without the spatial context), fig. 4:

  y = g_a(x)      z = h_a(y)      z_hat = Q(z)  coded with the factorized prior
  (mu, sigma) = h_s(z_hat)        y_hat = Q(y - mu) + mu  coded with N(mu, sigma)
  x_hat = g_s(y_hat)

With `context_slices > 0` the Gaussian parameters of y come from the channel-wise context model of
Minnen and Singh (ICIP 2020) driven by h_s's outputs (`entropy.channel_context`). g_a/g_s use GDN
(Balle et al. 2016) or residual blocks. `HyperpriorModel` codes one tensor; `HyperpriorCodec`
applies one model per scale, which is the "base learned codec" the bit-allocation methods build on.
A variable-rate model with `z_priors` codes z with one factorized prior per quality
(`hssc_jax.training.z_priors`).

Port decisions: docs/port_notes.md, "Base codec: mean-scale hyperprior (Minnen et al. 2018)".
"""

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.entropy import channel_context
from hssc_jax.entropy import determinism
from hssc_jax.entropy import factorized
from hssc_jax.entropy import gaussian
from hssc_jax.entropy import quantization
from hssc_jax.entropy import tables as tables_lib
from hssc_jax.entropy.channel_context import ChannelContext
from hssc_jax.entropy.factorized import EntropyBottleneck
from hssc_jax.layers import Analysis, HyperAnalysis, HyperSynthesis, Synthesis, pad_to_multiple


class CoderOptions(nn.Module):
  """The options of a mean-scale hyperprior, under the names the codecs that build one expose
  (`model_from`): widths of y, of g_a/g_s and of z, stride-2 stages of g_a and of h_a, the
  transform ("gdn" or "residual"), and the channel-wise context (slices, hidden widths)."""

  latent_channels: Any = 128
  hidden_channels: Any = 128
  hyper_channels: Any = 96
  stages: Any = 1
  hyper_stages: int = 2
  transform: str = "gdn"
  context_slices: int = 0
  context_hidden: Sequence[int] = (128, 64)


class HyperpriorModel(CoderOptions, base.RateOptions):
  """Mean-scale hyperprior over one NHWC tensor of `out_channels` channels."""

  out_channels: int = 0
  lrp: bool = True
  latent_blocks: int = 0  # residual blocks of g_a and g_s on the latent grid (`Analysis`)

  @nn.nowrap
  def context_model(self) -> ChannelContext:
    return ChannelContext(channels=self.latent_channels, num_slices=self.context_slices,
                          max_support=self.context_slices, hidden=tuple(self.context_hidden),
                          lrp=self.lrp)

  def setup(self):
    if int(self.out_channels) < 1:
      raise errors.ConfigError(f"out_channels must be >= 1, got {self.out_channels}")
    if self.transform not in ("gdn", "residual"):
      raise errors.ConfigError(f"transform must be 'gdn' or 'residual', got {self.transform!r}")
    if isinstance(self.latent_blocks, bool) or int(self.latent_blocks) != self.latent_blocks or \
        self.latent_blocks < 0:
      raise errors.ConfigError(f"latent_blocks must be an integer >= 0, got {self.latent_blocks!r}")
    self.g_a = Analysis(self.hidden_channels, self.latent_channels, self.stages, self.transform,
                        blocks=int(self.latent_blocks))
    self.g_s = Synthesis(self.hidden_channels, self.out_channels, self.stages, self.transform,
                         blocks=int(self.latent_blocks))
    self.h_a = HyperAnalysis(self.hyper_channels, self.hyper_stages)
    self.h_s = HyperSynthesis(self.hyper_channels, 2 * self.latent_channels, self.hyper_stages)
    self.entropy_bottleneck = EntropyBottleneck(qualities=self.z_prior_count)
    if self.context_slices:
      self.context = self.context_model()
    if self.qualities:
      self.gain = self.param("gain", gain_init(self.qualities), (self.qualities, self.latent_channels))
      self.inv_gain = self.param("inv_gain", gain_init(self.qualities, inverse=True),
                                 (self.qualities, self.latent_channels))

  @property
  def z_prior_count(self) -> int:
    """Factorized priors of z: one per quality with `z_priors` (and qualities), else 0 (shared)."""
    return int(self.qualities) if self.z_priors and self.qualities else 0

  @property
  def multiple(self) -> int:
    return 2 ** (max(self.stages, 0) + self.hyper_stages)

  def apply_gain(self, y: jax.Array, inverse: bool = False) -> jax.Array:
    """y times the gain vector (or the inverse gain) of `quality`; identity when qualities == 0."""
    if not self.qualities:
      return y
    return y * jnp.exp((self.inv_gain if inverse else self.gain)[self.quality]).astype(y.dtype)

  def analyze(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(y, z): y = g_a(x) (times the quality's gain vector) and its side latent z = h_a(y)."""
    y = self.apply_gain(self.g_a(pad_to_multiple(x, self.multiple)))
    return y, self.h_a(y)

  def hyper_synthesis(self, z_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
    """h_s output split into (means, scales) — or the context model's hyper inputs."""
    p = self.h_s(z_hat)
    return p[..., :self.latent_channels], p[..., self.latent_channels:]

  def synthesis(self, y_hat: jax.Array, height: int, width: int) -> jax.Array:
    return self.g_s(self.apply_gain(y_hat, inverse=True))[:, :height, :width, :]

  def quantize_and_rate(self, y: jax.Array, z: jax.Array, mode: str, hyper_args: tuple = ()
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(y_hat, {"y": bits per image, "z": bits per image}): z through the entropy bottleneck, y
    through the Gaussian conditional (or the channel context) with h_s(z_hat)'s parameters
    (`hyper_args`: what a subclass's `hyper_synthesis` takes besides z_hat)."""
    z_hat, z_bits = self.entropy_bottleneck(z, mode, self.quality)
    means, scales = self.hyper_synthesis(z_hat, *hyper_args)
    if self.context_slices:
      y_hat, y_bits = self.context(y, means, scales, mode)
    else:
      rng = self.make_rng("noise") if quantization.needs_rng(mode) else None
      y_hat, y_bits = gaussian.conditional(y, means, scales, mode, rng)
    per_image = lambda b: b.reshape(b.shape[0], -1).sum(axis=1)
    return y_hat, {"y": per_image(y_bits), "z": per_image(z_bits)}

  def __call__(self, x: jax.Array, mode: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (x_hat, {"y": bits per image, "z": bits per image})."""
    y_hat, bits = self.quantize_and_rate(*self.analyze(x), mode)
    return self.synthesis(y_hat, x.shape[1], x.shape[2]), bits

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    scale_table = gaussian.default_scale_table()
    density = params["entropy_bottleneck"]["density"]
    if self.z_prior_count:  # one z table per quality
      z = {f"q{q}": factorized.build_table(factorized.at_quality(density, q)).to_dict()
           for q in range(self.z_prior_count)}
    else:
      z = factorized.build_table(density).to_dict()
    return {"z": z, "y": gaussian.build_table(scale_table).to_dict(), "scale_table": scale_table}

  @nn.nowrap
  def z_table(self, tables: Mapping[str, Any]) -> tables_lib.CDFTable:
    """The CDF table of z at this model's quality (`build_tables`)."""
    z = tables["z"]
    if not self.z_prior_count:
      return tables_lib.CDFTable.from_dict(z)
    key = f"q{int(self.quality)}"
    if key not in z:
      raise errors.ConfigError(f"the tables hold no z prior for quality {int(self.quality)}")
    return tables_lib.CDFTable.from_dict(z[key])

  @nn.nowrap
  def encode_latents(self, params: Any, tables: Mapping[str, Any], y: np.ndarray, z: np.ndarray,
                     jit: bool = True, hyper_args: tuple = ()
                     ) -> tuple[dict[str, bytes], int, np.ndarray]:
    """Host: codes the analysis outputs. Returns (streams, index digest, y_hat as decoded)."""
    t_z = self.z_table(tables)
    t_y = tables_lib.CDFTable.from_dict(tables["y"])
    scale_table = np.asarray(tables["scale_table"])
    z_data, z_hat = factorized.compress(t_z, z)
    hyper = base.compiled(self, "hyper_synthesis", host=True, jit=jit)(params, z_hat, *hyper_args)
    if self.context_slices:
      y_data, y_hat, crc = channel_context.compress(
          self.context_model(), params["context"], t_y, scale_table, y, *hyper, jit=jit)
    else:
      y_data, y_hat, idx = gaussian.compress(t_y, scale_table, y, *hyper)
      crc = determinism.digest(idx)
    return {"y": y_data, "z": z_data}, crc, y_hat

  @nn.nowrap
  def encode(self, params: Any, tables: Mapping[str, Any], x: np.ndarray, jit: bool = True
             ) -> tuple[dict[str, bytes], dict[str, tuple], dict[str, Any], np.ndarray]:
    """Host: codes one tensor. Returns (streams, shapes, metadata, y_hat as decoded)."""
    y, z = (np.asarray(a) for a in base.compiled(self, "analyze")(params, x))
    streams, crc, y_hat = self.encode_latents(params, tables, y, z, jit)
    shapes = {"x": x.shape, "y": y.shape, "z": z.shape}
    return streams, shapes, {"crc": crc}, y_hat

  @nn.nowrap
  def decode_latents(self, params: Any, tables: Mapping[str, Any],
                     streams: Mapping[str, bytes], shapes: Mapping[str, tuple],
                     metadata: Mapping[str, Any], jit: bool = True, hyper_args: tuple = ()
                     ) -> np.ndarray:
    """Host: checks the container entries and decodes y_hat (inverse of `encode_latents`)."""
    base.require(streams, ["y", "z"], "streams")
    base.require(shapes, ["x", "y", "z"], "shapes")
    base.require(metadata, ["crc"], "metadata")
    x_shape, y_shape, z_shape = (tuple(shapes[k]) for k in ("x", "y", "z"))
    self._check_shapes(x_shape, y_shape, z_shape)
    t_z = self.z_table(tables)
    t_y = tables_lib.CDFTable.from_dict(tables["y"])
    scale_table = np.asarray(tables["scale_table"])
    z_hat = factorized.decompress(t_z, streams["z"], z_shape)
    hyper = base.compiled(self, "hyper_synthesis", host=True, jit=jit)(params, z_hat, *hyper_args)
    if self.context_slices:
      return channel_context.decompress(self.context_model(), params["context"], t_y, scale_table,
                                        streams["y"], *hyper, int(metadata["crc"]), jit=jit)
    means, scales = hyper
    y_hat = gaussian.decompress(t_y, scale_table, streams["y"], means, scales)
    determinism.check_digest(int(metadata["crc"]), gaussian.scale_indexes(scales, scale_table))
    return y_hat

  @nn.nowrap
  def decode(self, params: Any, tables: Mapping[str, Any], streams: Mapping[str, bytes],
             shapes: Mapping[str, tuple], metadata: Mapping[str, Any], jit: bool = True
             ) -> np.ndarray:
    """Host: inverse of `encode`."""
    y_hat = self.decode_latents(params, tables, streams, shapes, metadata, jit)
    x_shape = tuple(shapes["x"])
    x_hat = base.compiled(self, "synthesis", x_shape[1], x_shape[2])(params, y_hat)
    return np.asarray(x_hat)

  @nn.nowrap
  def _check_shapes(self, x_shape, y_shape, z_shape) -> None:
    m, s = self.multiple, 2 ** max(self.stages, 0)
    ph, pw = -(-x_shape[1] // m) * m, -(-x_shape[2] // m) * m
    want_y = (x_shape[0], ph // s, pw // s, self.latent_channels)
    want_z = (x_shape[0], ph // m, pw // m, self.hyper_channels)
    if len(x_shape) != 4 or x_shape[3] != self.out_channels or y_shape != want_y or z_shape != want_z:
      raise errors.CorruptBitstreamError(
          f"bitstream shapes x={x_shape} y={y_shape} z={z_shape} do not fit this model "
          f"(expected y={want_y}, z={want_z})")


GAIN_RANGE = (0.25, 4.0)


def gain_init(qualities: int, inverse: bool = False):
  """Log-gains spread geometrically over GAIN_RANGE (quality 0 = lowest rate), as in Cui et al."""
  def init(_, shape, dtype=jnp.float32):
    lo, hi = np.log(GAIN_RANGE)
    g = np.linspace(lo, hi, qualities) if qualities > 1 else np.zeros(1)
    g = -g if inverse else g
    return jnp.broadcast_to(jnp.asarray(g, dtype)[:, None], shape)
  return init


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(CoderOptions) if f.name not in ("parent",
                                                                                     "name"))


def model_from(codec: base.FeatureCodec, out_channels: int, model_class: type = None, **overrides
               ) -> "HyperpriorModel":
  """The `HyperpriorModel` (or `model_class`) a codec builds from its fields of the same names
  (`MODEL_FIELDS` it has, then `overrides`) and its rate options (variable rate)."""
  kwargs = {f: getattr(codec, f) for f in MODEL_FIELDS if hasattr(codec, f)}
  kwargs.update(overrides)
  if "context_hidden" in kwargs:
    kwargs["context_hidden"] = tuple(kwargs["context_hidden"])
  return (model_class or HyperpriorModel)(out_channels=out_channels, **kwargs,
                                          **codec.rate_kwargs())


class HyperpriorCodec(base.FeatureCodec, CoderOptions):
  """One mean-scale hyperprior per scale (the base learned feature codec).

  Streams in the bitstream: "<scale>/y" and "<scale>/z" for each scale.
  """

  codec_id: ClassVar[str] = "hyperprior"
  added_fields: ClassVar[tuple[str, ...]] = ("latent_blocks",)  # the zoo's keep their fingerprints
  stages: Any = (2, 1, 1)
  latent_blocks: Any = 0  # per scale or once: residual blocks of g_a and g_s on the latent grid

  model_class: ClassVar[type] = HyperpriorModel

  @nn.nowrap
  def scale_options(self, scale: str) -> dict[str, Any]:
    """`latent_channels`, `hidden_channels`, `hyper_channels`, `stages` and `latent_blocks` of one
    scale (each may be given once or per scale)."""
    return {f: base.per_scale(getattr(self, f), list(self.scales), f)[scale]
            for f in ("latent_channels", "hidden_channels", "hyper_channels", "stages",
                      "latent_blocks")}

  @nn.nowrap
  def scale_model(self, scale: str) -> HyperpriorModel:
    """The model of one scale (`scale_options`)."""
    return model_from(self, list(self.channels)[list(self.scales).index(scale)], self.model_class,
                      **self.scale_options(scale))

  def setup(self):
    self.check_fields()
    self.models = {s: self.scale_model(s) for s in self.scales}

  def code_scales(self, features: base.Pyramid, mode: str, scale_args=None
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(features_hat, bits per stream "<scale>/y|z"); `scale_args` {scale: extra arguments of the
    scale model}."""
    out, bits = {}, {}
    for s in self.scales:
      out[s], b = self.models[s](features[s], mode, *(scale_args or {}).get(s, ()))
      bits.update({f"{s}/{k}": v for k, v in b.items()})
    return out, bits

  def __call__(self, features: base.Pyramid, training: bool) -> dict[str, Any]:
    out, bits = self.code_scales(features, self.train_quantization if training else "round")
    return {"features_hat": out, "bits": bits}

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    return {s: self.scale_model(s).build_tables(params[f"models_{s}"]) for s in self.scales}

  @nn.nowrap
  def compress_streams(self, params, tables, features, scale_args=None):
    """Streams "<scale>/y|z"; `scale_args` {scale: extra arguments of the scale model's encode}."""
    coded = base.Coded()
    for s in self.scales:
      coded.add(s, *self.scale_model(s).encode(params[f"models_{s}"], tables[s], features[s],
                                               *(scale_args or {}).get(s, ())))
    return coded.astuple()

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata, scale_args=None):
    """Inverse of `compress_streams` (the same `scale_args`, for the scale models' decode)."""
    return {s: self.scale_model(s).decode(params[f"models_{s}"], tables[s],
                                          *base.part(s, streams, shapes, metadata),
                                          *(scale_args or {}).get(s, ()))
            for s in self.scales}
