"""HSC: hierarchical semantic compression, adapted from images to detector feature pyramids.

Li, Zhang, Xu, Jiang, Liu, Zhu, "Hierarchical Semantic Compression for Consistent Image Semantic
Restoration", arXiv:2502.16799, 2025. HSC codes two levels of latents: the *core semantics* with a
semantic compression network (SCN) and the *middle-level semantic feature* with a feature compression
network (FCN), hierarchically, "via an entropy model progressively shared by channel-wise context".
The paper works in the latent spaces of a GAN inversion encoder; here the two levels are built from
the detector's pyramid (equation labels are this port's):

```
 level 1 (SCN, core semantics), from the coarsest, most semantic scale p_L:
   y_c = g_c(p_L)     z_c = h_a(y_c)     z_c_hat = Q(z_c)  factorized prior          "core/z"  (H1)
   y_c_hat = CC_c(y_c | h_s(z_c_hat))    channel-wise context (Minnen & Singh 2020)  "core/y"  (H2)
 level 2 (FCN, feature latent), from all scales fused on one grid (default: the second coarsest):
   u = conv1x1(concat_s resample_s(p_s))    y_f = g_f(u)                                       (H3)
   (m_f, s_f) = P(y_c_hat)                  the core latent is the feature latent's prior      (H4)
   y_f_hat = CC_f(y_f | m_f, s_f)           channel-wise context                  "feature/y"  (H5)
 reconstruction, for every scale s:
   t = lrelu(conv1x1([g_f^-1(y_f_hat), up(conv1x1(y_c_hat))]))  on the fusion grid
   p_s_hat = conv(FiLM(ResBlock(resample_s(t)) | GAP(y_c_hat)))                                (H6)
```

With a quality knob (`qualities` > 0) both latents are coded times their quality's gain vector;
(H6) sees them times the inverse gains (`ungained_core_synthesis`), so its input does not scale
with quality.

Rates are reported per level: bits "core/y", "core/z" and "feature/y".

Port decisions: docs/port_notes.md, "HSC (Li et al., 2025)".
"""

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import CoderOptions, HyperpriorModel, gain_init, model_from
from hssc_jax.codecs.refinement import Refinement
from hssc_jax.entropy import channel_context
from hssc_jax.entropy import tables as tables_lib
from hssc_jax.entropy.channel_context import ChannelContext
from hssc_jax.layers import GDN, Analysis, ResidualBlock, conv, fit_to, pad_to_multiple


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """(N, H, W, C * b^2) -> (N, bH, bW, C): the pixel shuffle of sub-pixel convolution."""
  n, h, w, c = x.shape
  c //= block * block
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


class Upsample(nn.Module):
  """x2 upsampling by sub-pixel convolution (Shi et al., CVPR 2016): conv to 4x the channels, then
  a pixel shuffle. Used instead of transposed convs, which XLA runs several times slower on CPU."""

  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _depth_to_space(conv(4 * self.features, self.kernel)(x))


class Rescale(nn.Module):
  """`up` x2 sub-pixel upsamplings (up > 0), stride-2 convs (up < 0) or one conv (0), each with
  LeakyReLU, then a crop (or bilinear fit) to (h, w)."""

  features: int
  up: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, h: int, w: int) -> jax.Array:
    if self.up == 0:
      x = nn.leaky_relu(conv(self.features, self.kernel)(x))
    for _ in range(abs(self.up)):
      layer = (Upsample(self.features, self.kernel) if self.up > 0
               else conv(self.features, self.kernel, 2))
      x = nn.leaky_relu(layer(x))
    return fit_to(x, h, w)


class FeatureSynthesis(nn.Module):
  """g_f^-1: the mirror of `layers.Analysis` with sub-pixel upsampling (IGDN or residual blocks
  between stages), from the feature latent back to the fusion grid."""

  features: int
  stages: int = 1
  kind: str = "gdn"
  kernel: int = 5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(max(self.stages, 1)):
      if i > 0:
        x = GDN(inverse=True)(x) if self.kind == "gdn" else ResidualBlock(self.features)(x)
      x = (Upsample(self.features, self.kernel) if self.stages > 0
           else conv(self.features, self.kernel))(x)
    return x


class CorePrior(nn.Module):
  """(H4): hyper inputs (means, scales) of the feature latent's context model from the decoded core
  latent, on the feature latent's (h, w) grid."""

  features: int
  latent_channels: int
  up: int

  @nn.compact
  def __call__(self, core_hat: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
    x = Rescale(self.features, self.up, kernel=5)(core_hat, h, w)
    p = conv(2 * self.latent_channels, 3)(x)
    return p[..., :self.latent_channels], p[..., self.latent_channels:]


class HSCCodec(base.FeatureCodec, CoderOptions, Refinement):
  """Two-level hierarchical latents, core semantics then feature latent (see module doc).

  Streams: "core/y", "core/z" (level 1), "feature/y" (level 2), and "<scale>_refine/y|z" for the
  `refine_scales` (`Refinement`, not a step of the paper: what (H6) misses of a scale, coded
  from quality `refine_from` up and added to it).

  Attributes beyond scales/channels:
    core_channels: channels of the core semantic latent y_c.
    latent_channels: channels of the feature latent y_f.
    hidden_channels: width of the transforms (per scale at most that scale's channel count).
    hyper_channels: channels of the core level's side latent z_c.
    core_stages, feature_stages: stride-2 stages of g_c (on the coarsest scale) and g_f (on the
      fusion grid); hyper_stages: of h_a/h_s of the core level.
    fusion_scale: the scale whose grid the feature latent is analysed on ("": second coarsest).
    context_slices: slices of both channel-wise context models (>= 1; 1: no channel
      autoregression, the parameters come from the hyper inputs alone); context_hidden: their widths.
    transform: "gdn" or "residual" for g_c, g_f and g_f^-1.
    ungained_core_synthesis: with a quality knob, (H6) reads the core latent divided by its
      quality's gain (True in `configs/hsc.py`). False, the default of models trained before it,
      feeds (H6) the gained core latent, whose scale grows 16x from quality 0 to 5.
    stages (from `CoderOptions`) is unused: core_stages and feature_stages set the strides.
  """

  codec_id: ClassVar[str] = "hsc"
  added_fields: ClassVar[tuple[str, ...]] = ("ungained_core_synthesis", *Refinement.REFINE_FIELDS)
  core_channels: int = 96
  core_stages: int = 1
  feature_stages: int = 1
  fusion_scale: str = ""
  ungained_core_synthesis: bool = False
  # `CoderOptions` defaults that HSC changes
  hyper_channels: int = 64
  context_slices: int = 4
  context_hidden: Sequence[int] = (96, 64)

  # ---- structure -------------------------------------------------------------------------------

  @property
  def fusion_index(self) -> int:
    return len(self.scales) - 2 if not self.fusion_scale else list(self.scales).index(
        self.fusion_scale)

  @property
  def widths(self) -> dict[str, int]:
    """Transform width per scale: `hidden_channels`, narrowed to the scale's channel count."""
    return {s: min(self.hidden_channels, c) for s, c in zip(self.scales, self.channels)}

  @property
  def core_levels(self) -> int:
    """Power-of-two levels from the fusion grid down to the core latent's grid."""
    return len(self.scales) - 1 - self.fusion_index + self.core_stages

  @nn.nowrap
  def core_model(self) -> HyperpriorModel:
    """Level 1 (SCN): mean-scale hyperprior + channel context over the coarsest scale."""
    return model_from(self, list(self.channels)[-1], latent_channels=self.core_channels,
                      stages=self.core_stages)

  @nn.nowrap
  def feature_context_model(self) -> ChannelContext:
    """Level 2 (FCN): the feature latent's channel context (H5)."""
    return ChannelContext(channels=self.latent_channels, num_slices=self.context_slices,
                          max_support=self.context_slices, hidden=tuple(self.context_hidden))

  @nn.nowrap
  def prior_model(self) -> CorePrior:
    return CorePrior(self.hidden_channels, self.latent_channels,
                     self.core_levels - self.feature_stages)

  @nn.nowrap
  def _check_config(self) -> None:
    self.check_fields(min_scales=2)
    if self.fusion_scale and self.fusion_scale not in self.scales:
      raise errors.ConfigError(f"fusion_scale {self.fusion_scale!r} is not one of {self.scales}")
    if self.transform not in ("gdn", "residual"):
      raise errors.ConfigError(f"transform must be 'gdn' or 'residual', got {self.transform!r}")
    for name in ("core_channels", "latent_channels", "hidden_channels", "hyper_channels"):
      if int(getattr(self, name)) < 1:
        raise errors.ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("core_stages", "feature_stages"):
      if int(getattr(self, name)) < 0:
        raise errors.ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 1 <= self.context_slices <= min(self.core_channels, self.latent_channels):
      raise errors.ConfigError(
          f"context_slices must be in [1, min(core_channels, latent_channels)], got "
          f"{self.context_slices}")

  def setup(self):
    self._check_config()
    w, k = self.widths, self.fusion_index
    hidden = self.hidden_channels
    self.core = self.core_model()
    # Level 2 analysis (H3): every scale to the fusion grid, then g_f.
    self.fuse_in = {s: Rescale(w[s], i - k) for i, s in enumerate(self.scales)}
    self.fuse_out = conv(hidden, 1)
    self.g_f = Analysis(hidden, self.latent_channels, self.feature_stages, self.transform)
    self.prior = self.prior_model()
    self.feature_context = self.feature_context_model()
    # Reconstruction (H6).
    self.g_f_inv = FeatureSynthesis(hidden, self.feature_stages, self.transform)
    self.core_in = conv(hidden, 1)
    self.merge = conv(hidden, 1)
    self.unfuse = {s: Rescale(w[s], k - i) for i, s in enumerate(self.scales)}
    self.refine = {s: ResidualBlock(w[s]) for s in self.scales}
    self.film = {s: nn.Dense(2 * w[s], kernel_init=nn.initializers.zeros) for s in self.scales}
    self.heads = {s: conv(c, 3) for s, c in zip(self.scales, self.channels)}
    self.setup_refinements(self.scales)
    if self.qualities:  # variable rate: gain vectors of the feature latent (the core's are in core)
      shape = (self.qualities, self.latent_channels)
      self.feature_gain = self.param("feature_gain", gain_init(self.qualities), shape)
      self.feature_inv_gain = self.param("feature_inv_gain", gain_init(self.qualities, True), shape)

  def _feature_gain(self, y: jax.Array, inverse: bool = False) -> jax.Array:
    if not self.qualities:
      return y
    return y * jnp.exp((self.feature_inv_gain if inverse else self.feature_gain)[self.quality])

  # ---- pure transforms (jit/grad) --------------------------------------------------------------

  def feature_analysis(self, features: base.Pyramid) -> jax.Array:
    """(H3): pyramid -> feature latent y_f (N, ceil(h_k / 2^fs), ceil(w_k / 2^fs), latent)."""
    h, w = features[self.scales[self.fusion_index]].shape[1:3]
    parts = [self.fuse_in[s](features[s], h, w) for s in self.scales]
    u = self.fuse_out(jnp.concatenate(parts, axis=-1))
    return self._feature_gain(self.g_f(pad_to_multiple(u, 2 ** self.feature_stages)))

  def synthesize(self, feature_hat: jax.Array, core_hat: jax.Array,
                 sizes: Sequence[tuple[int, int]]) -> dict[str, jax.Array]:
    """(H6): both decoded latents -> pyramid with (H, W) `sizes` per scale."""
    hf, wf = sizes[self.fusion_index]
    t = self.g_f_inv(self._feature_gain(feature_hat, inverse=True))[:, :hf, :wf, :]
    # Both latents leave their quality's gain domain before synthesis (see ungained_core_synthesis).
    if self.ungained_core_synthesis:
      core_hat = self.core.apply_gain(core_hat, inverse=True)
    c = self.core_in(core_hat)
    f = 2 ** self.core_levels
    c = fit_to(jax.image.resize(c, (c.shape[0], c.shape[1] * f, c.shape[2] * f, c.shape[3]),
                              "bilinear"), hf, wf)
    t = nn.leaky_relu(self.merge(jnp.concatenate([t, c], axis=-1)))
    semantics = jnp.mean(core_hat, axis=(1, 2))
    out = {}
    for s, (h, w) in zip(self.scales, sizes):
      x = self.refine[s](self.unfuse[s](t, h, w))
      gamma, beta = jnp.split(self.film[s](semantics), 2, axis=-1)
      x = x * (1.0 + gamma[:, None, None, :]) + beta[:, None, None, :]
      out[s] = self.heads[s](x)
    return out

  def __call__(self, features: base.Pyramid, training: bool) -> dict[str, Any]:
    mode = self.train_quantization if training else "round"
    sizes = tuple(tuple(features[s].shape[1:3]) for s in self.scales)
    # Level 1 (H1)-(H2).
    y_c, z_c = self.core.analyze(features[self.scales[-1]])
    z_c_hat, z_bits = self.core.entropy_bottleneck(z_c, mode, self.core.quality)
    core_hat, yc_bits = self.core.context(y_c, *self.core.hyper_synthesis(z_c_hat), mode)
    # Level 2 (H3)-(H5).
    y_f = self.feature_analysis(features)
    means, scales = self.prior(core_hat, y_f.shape[1], y_f.shape[2])
    feature_hat, yf_bits = self.feature_context(y_f, means, scales, mode)
    per_image = lambda b: b.reshape(b.shape[0], -1).sum(axis=1)
    out, refine_bits = self.add_refinements(features, self.synthesize(feature_hat, core_hat, sizes),
                                            mode)
    return {"features_hat": out,
            "bits": {"core/y": per_image(yc_bits), "core/z": per_image(z_bits),
                     "feature/y": per_image(yf_bits), **refine_bits}}

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def expected_shapes(self, sizes: Sequence[Sequence[int]], batch: int) -> dict[str, tuple]:
    """Shapes of the coded tensors for a pyramid of (H, W) `sizes` (what decoding checks)."""
    (hc, wc), (hf, wf) = sizes[-1], sizes[self.fusion_index]
    m, s = 2 ** (self.core_stages + self.hyper_stages), 2 ** self.core_stages
    f = 2 ** self.feature_stages
    return {"core/x": (batch, hc, wc, list(self.channels)[-1]),
            "core/y": (batch, _ceil_div(hc, m) * m // s, _ceil_div(wc, m) * m // s,
                       self.core_channels),
            "core/z": (batch, _ceil_div(hc, m), _ceil_div(wc, m), self.hyper_channels),
            "feature/y": (batch, _ceil_div(hf, f), _ceil_div(wf, f), self.latent_channels)}

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    core = self.core_model().build_tables(params["core"])
    return {"core": core, "feature": {"y": core["y"], "scale_table": core["scale_table"]},
            **self.refine_tables(params)}

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    coded = base.Coded()
    core_hat = coded.add("core", *self.core_model().encode(params["core"], tables["core"],
                                                           features[self.scales[-1]]))
    y_f = np.asarray(base.compiled(self, "feature_analysis")(params, features))
    hyper = self._feature_hyper(params, core_hat, y_f.shape[1], y_f.shape[2])
    t_y = tables_lib.CDFTable.from_dict(tables["feature"]["y"])
    data, feature_hat, crc = channel_context.compress(
        self.feature_context_model(), params["feature_context"], t_y,
        np.asarray(tables["feature"]["scale_table"]), y_f, *hyper)
    coded.add("feature", {"y": data}, {"y": tuple(y_f.shape)}, {"crc": crc})
    sizes = tuple(tuple(features[s].shape[1:3]) for s in self.scales)
    coded.metadata["sizes"] = [list(hw) for hw in sizes]
    if self.coded_refine_scales:  # the refinements code the error of what the decoder synthesizes
      decoded = base.compiled(self, "synthesize", sizes)(params, feature_hat, core_hat)
      self.refine_streams(params, tables, features, coded, decoded)
    return coded.astuple()

  @nn.nowrap
  def _feature_hyper(self, params, core_hat, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(H4) in the deterministic float64 host path: it sets the feature latent's entropy indexes."""
    return base.compiled(self.prior_model(), "__call__", h, w, host=True)(params["prior"], core_hat)

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    base.require(streams, ["core/y", "core/z", "feature/y"], "streams")
    base.require(shapes, ["core/x", "core/y", "core/z", "feature/y"], "shapes")
    base.require(metadata, ["core/crc", "feature/crc", "sizes"], "metadata")
    sizes = self.coded_sizes(metadata)
    got = {k: tuple(shapes[k]) for k in ("core/x", "core/y", "core/z", "feature/y")}
    want = self.expected_shapes(sizes, got["core/x"][0] if got["core/x"] else 0)
    if got != want or want["core/x"][0] < 1:
      raise errors.CorruptBitstreamError(
          f"bitstream shapes {got} do not fit this model and sizes {sizes} (expected {want})")
    for k in ("core/crc", "feature/crc"):
      if not isinstance(metadata[k], int):
        raise errors.CorruptBitstreamError(f"bitstream metadata {k!r} is not an integer")
    # Level 1: z_c, then y_c through the core channel context.
    core_hat = self.core_model().decode_latents(params["core"], tables["core"],
                                                *base.part("core", streams, shapes, metadata))
    # Level 2: y_f through the feature channel context, its hyper inputs from the core latent.
    _, hf, wf, _ = want["feature/y"]
    hyper = self._feature_hyper(params, core_hat, hf, wf)
    t_f = tables_lib.CDFTable.from_dict(tables["feature"]["y"])
    feature_hat = channel_context.decompress(
        self.feature_context_model(), params["feature_context"], t_f,
        np.asarray(tables["feature"]["scale_table"]), streams["feature/y"], *hyper,
        int(metadata["feature/crc"]))
    out = base.compiled(self, "synthesize", sizes)(params, feature_hat, core_hat)
    out = self.with_refinements(
        params, out, self.decode_refinements(params, tables, streams, shapes, metadata))
    return jax.tree.map(np.asarray, out)
