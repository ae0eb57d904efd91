"""HSSC: hierarchical and spatial semantic correlations for multi-scale feature compression.

Zhang, Pan, Li, Wang, Kwong, "Learning Hierarchical and Spatial Semantic Correlations for Enhanced
Multi-Scale Feature Compression" (HSSC), IEEE Transactions on Broadcasting, 2025. Its Semantic-guided
Feature Transform Network (SFTNet) turns the pyramid into one compact representation and back:

```
 p3 -proj,SE-> r3 -down,intra-> d4 \
 p4 -proj,SE,SA----------------> e4 -inter-> r4 -down,intra-> d5 \
 p5 -proj,SE,SA-----------------------------------------------> e5 -inter-> r5 -1x1-> c   (compact)
 c --hyperprior (mean-scale, optional channel context)--> c_hat
 c_hat -> t5 -up-> t4 -up-> t3,  each t_s adaptively enhanced under c_hat's guidance -> p*_hat
```

Semantic-guided cascaded fusion (encoder). Scales are fused finest to coarsest; the running
representation r is carried to the next coarser grid by a stride-2 conv ("down"). At every fusion
step two kinds of semantic correlation decide what survives (equation numbers are this port's):

- intra-scale: squeeze-excitation channel attention (Hu et al., CVPR 2018) and spatial
  self-attention (SAGAN, Zhang et al., ICML 2019: x + gamma * softmax(q k^T / sqrt(d)) v, gamma starting
  at 0, keys/values average-pooled by `attention_pool`) on each map at the fusion grid;     (F1)
- inter-scale, between the carried finer stream d and the current scale e:
    rho = <d / |d|, e / |e|>                      per-position semantic (cosine) correlation  (F2)
    a   = sigmoid(MLP([GAP(d); GAP(e)]))          which channels of d are relevant to e        (F3)
    g   = sigmoid(conv3x3([d, e, rho]))           where they are relevant                      (F4)
    d'  = a * g * d + gamma * CrossAttn(q=e, kv=d)                                             (F5)
    r   = ResBlock(conv1x1([e, d']))                                                           (F6)
  With `inter_scale=False` (ablation) (F2)-(F5) are skipped: r = ResBlock(conv1x1([e, d])).
The compact representation is c = conv1x1(r_coarsest), `compact_channels` wide.

Adaptive feature reconstruction (decoder). Scales are rebuilt coarsest to finest from c_hat: each
state t is carried to the next finer grid by a stride-2 transposed conv ("up"), refined by a
residual block h, then enhanced with semantics from the compact representation:
    q = resize(conv1x1(c_hat))                    compact guidance on this grid                (R1)
    a = sigmoid(MLP([GAP(h); GAP(c_hat)]))        channel semantics                            (R2)
    z = lrelu(conv3x3([h, q]));  m = sigmoid(conv1x1(z))        spatial gate                  (R3)
    t = h + a * m * conv3x3(z)                                                                 (R4)
and p_hat = conv3x3(t). With `adaptive_reconstruction=False` (ablation) t = h (plain up + conv).
Both networks run min(`transform_channels`, C_s) channels wide on the grid of scale s.

Port decisions: docs/port_notes.md, "HSSC (Zhang et al., IEEE T-Broadcasting 2025)".
"""

import dataclasses
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import CoderOptions, HyperpriorModel, model_from
from hssc_jax.codecs.refinement import Refinement
from hssc_jax.layers import ResidualBlock, conv, deconv, resize_to


# The key (in parameter names) of the last step of the upward cascade, the one that joins the
# coarser scales' stream to the compact scale (only when the compact scale is not the coarsest).
UPWARD_JOIN = "join"


def _pool(x: jax.Array) -> jax.Array:
  """Global average pooling NHWC -> NC."""
  return jnp.mean(x, axis=(1, 2))


def _channel_gate(sources: Sequence[jax.Array], out: int, hidden: int, reduction: int) -> jax.Array:
  """sigmoid(MLP(GAP of `sources`, concatenated)) as an N11C gate. Call it from a compact method:
  its two Dense layers are named in the caller's scope (Dense_i, Dense_i+1)."""
  pooled = jnp.concatenate([_pool(x) for x in sources], -1)
  s = nn.relu(nn.Dense(max(hidden // reduction, 4))(pooled))
  return nn.sigmoid(nn.Dense(out)(s))[:, None, None, :]


class Resample(nn.Module):
  """`steps` stride-2 convs (> 0: down), transposed convs (< 0: up) or one conv (0), LeakyReLU,
  then a bilinear fit to (h, w) when the scale ratio is not exactly a power of two."""

  features: int
  steps: int

  @nn.compact
  def __call__(self, x: jax.Array, h: int, w: int) -> jax.Array:
    if self.steps == 0:
      x = nn.leaky_relu(conv(self.features, 3)(x))
    for _ in range(abs(self.steps)):
      layer = conv(self.features, 3, 2) if self.steps > 0 else deconv(self.features, 3, 2)
      x = nn.leaky_relu(layer(x))
    return resize_to(x, h, w)


class ChannelAttention(nn.Module):
  """Squeeze-excitation (Hu et al., CVPR 2018): x * sigmoid(MLP(GAP(x)))."""

  reduction: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    return x * _channel_gate([x], c, c, self.reduction)


class SpatialAttention(nn.Module):
  """softmax(q k^T / sqrt(dim)) v with queries from `x` and keys/values from `source` (default x),
  average-pooled by `pool` to keep it cheap; returns the attended values projected to x's width."""

  dim: int = 32
  pool: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, source: jax.Array | None = None) -> jax.Array:
    src = x if source is None else source
    if self.pool > 1:
      src = nn.avg_pool(src, (self.pool, self.pool), (self.pool, self.pool), padding="SAME")
    n, h, w, c = x.shape
    q = conv(self.dim, 1)(x).reshape(n, h * w, self.dim)
    k = conv(self.dim, 1)(src).reshape(n, -1, self.dim)
    v = conv(c, 1)(src).reshape(n, -1, c)
    a = jax.nn.softmax(jnp.einsum("nqd,nkd->nqk", q, k) / np.sqrt(self.dim), axis=-1)
    return conv(c, 1)(jnp.einsum("nqk,nkc->nqc", a, v).reshape(n, h, w, c))


@dataclasses.dataclass(frozen=True)
class AttentionSizes:
  """Query/key width and key/value pooling of `SpatialAttention`; squeeze-excitation reduction."""

  dim: int = 32
  pool: int = 2
  reduction: int = 4


class IntraScale(nn.Module):
  """(F1): channel attention, then (optionally) residual spatial self-attention with a zero-init
  gain (SAGAN)."""

  spatial: bool = True
  sizes: AttentionSizes = AttentionSizes()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ChannelAttention(self.sizes.reduction)(x)
    if self.spatial:
      gamma = self.param("gamma", nn.initializers.zeros, ())
      x = x + gamma * SpatialAttention(self.sizes.dim, self.sizes.pool)(x)
    return x


class InterScale(nn.Module):
  """Fuses the carried finer stream `d` into the current scale `e` (same grid): (F2)-(F6), or a
  plain concat fusion when `correlation` is off (the `inter_scale=False` ablation)."""

  features: int
  correlation: bool = True
  cross_attention: bool = True
  sizes: AttentionSizes = AttentionSizes()

  @nn.compact
  def __call__(self, d: jax.Array, e: jax.Array) -> jax.Array:
    if self.correlation:
      unit = lambda x: x * jax.lax.rsqrt(jnp.sum(jnp.square(x), -1, keepdims=True) + 1e-6)
      rho = jnp.sum(unit(d) * unit(e), -1, keepdims=True)                               # (F2)
      a = _channel_gate([d, e], d.shape[-1], self.features, self.sizes.reduction)       # (F3)
      g = nn.sigmoid(conv(d.shape[-1], 3)(jnp.concatenate([d, e, rho], -1)))           # (F4)
      d = a * g * d                                                                    # (F5)
      if self.cross_attention:
        gamma = self.param("gamma", nn.initializers.zeros, ())
        d = d + gamma * SpatialAttention(self.sizes.dim, self.sizes.pool)(e, d)
    r = conv(self.features, 1)(jnp.concatenate([e, d], -1))                            # (F6)
    return ResidualBlock(self.features)(r)


class AdaptiveEnhancement(nn.Module):
  """(R1)-(R4): gated refinement of a rebuilt state `h` under the compact representation."""

  features: int
  reduction: int = 4

  @nn.compact
  def __call__(self, h: jax.Array, compact_hat: jax.Array) -> jax.Array:
    q = resize_to(conv(self.features, 1)(compact_hat), h.shape[1], h.shape[2])       # (R1)
    a = _channel_gate([h, compact_hat], self.features, self.features, self.reduction)   # (R2)
    z = nn.leaky_relu(conv(self.features, 3)(jnp.concatenate([h, q], -1)))
    m = nn.sigmoid(conv(self.features, 1)(z))                                         # (R3)
    return h + a * m * conv(self.features, 3)(z)                                      # (R4)


class HSSCCodec(base.FeatureCodec, CoderOptions, Refinement):
  """SFTNet (semantic-guided cascaded fusion + adaptive reconstruction) around a hyperprior coder
  of the compact representation (see module doc). Streams: "compact/y", "compact/z", and
  "<scale>_refine/y|z" for the `refine_scales` (`Refinement`: what the compact representation
  misses of a rebuilt scale, coded on its own and added to it; not a step of the paper).

  Attributes beyond scales/channels:
    compact_scale: the scale whose grid holds the compact representation ("": the coarsest).
    compact_channels: channels of the compact representation.
    transform_channels: width of the fusion cascade and of the reconstruction (at most each
      scale's channel count there, `widths`).
    latent_channels, hidden_channels, hyper_channels, stages, hyper_stages, transform,
      context_slices, context_hidden: the `HyperpriorModel` coding the compact representation.
    inter_scale: inter-scale semantic correlation (F2)-(F5); False: plain concat fusion.
    adaptive_reconstruction: (R1)-(R4); False: plain upsample + conv rebuild.
    spatial_attention: spatial self-/cross-attention in (F1)/(F5) (channel attention stays).
    attention_channels, attention_pool, reduction: attention sizes (query/key width, key/value
      pooling, squeeze-excitation reduction).
    refine_scales, refine_latent_channels, refine_stages, refine_from: `Refinement` (not in the
      paper; none by default).
  """

  codec_id: ClassVar[str] = "hssc"
  compact_scale: str = ""
  compact_channels: int = 192
  transform_channels: int = 128
  hyper_channels: int = 64
  # SFTNet parts that can be switched off (ablations)
  inter_scale: bool = True
  adaptive_reconstruction: bool = True
  spatial_attention: bool = True
  # attention and squeeze-excitation sizes
  attention_channels: int = 32
  attention_pool: int = 2
  reduction: int = 4
  added_fields: ClassVar[tuple[str, ...]] = Refinement.REFINE_FIELDS  # older models' fingerprints

  @nn.nowrap
  def coder_model(self) -> HyperpriorModel:
    return model_from(self, self.compact_channels)

  @property
  def compact_index(self) -> int:
    return len(self.scales) - 1 if not self.compact_scale else list(self.scales).index(
        self.compact_scale)

  @property
  def chains(self) -> tuple[list[str], list[str]]:
    """Fusion order: (finest .. compact scale, coarsest .. just above the compact scale)."""
    k = self.compact_index
    return list(self.scales[:k + 1]), list(self.scales[k + 1:])[::-1]

  @property
  def widths(self) -> dict[str, int]:
    """SFTNet width per scale: `transform_channels`, narrowed to the scale's own channel count
    (keeps the full-resolution finest grid cheap)."""
    return {s: min(self.transform_channels, c) for s, c in zip(self.scales, self.channels)}

  @nn.nowrap
  def _check_config(self) -> None:
    self.check_fields()
    if self.compact_scale and self.compact_scale not in self.scales:
      raise errors.ConfigError(f"compact_scale {self.compact_scale!r} is not one of {self.scales}")
    for name in ("compact_channels", "transform_channels", "attention_channels", "attention_pool",
                 "reduction"):
      if int(getattr(self, name)) < 1:
        raise errors.ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

  def setup(self):
    self._check_config()
    w, finest = self.widths, self.scales[0]
    sizes = AttentionSizes(self.attention_channels, self.attention_pool, self.reduction)
    self.proj = {s: conv(w[s], 3) for s in self.scales}
    self.intra = {s: IntraScale(self.spatial_attention and s != finest, sizes)
                  for s in self.scales}
    joins = {}
    for chain in self.chains:
      for prev, s in zip(chain, chain[1:]):
        joins[s] = 1 if self.scales.index(s) > self.scales.index(prev) else -1
    lower, upper = self.chains
    if upper:  # the upward cascade joins the compact scale's stream at the end
      joins[UPWARD_JOIN] = -1
    target = lambda s: self.scales[self.compact_index] if s == UPWARD_JOIN else s
    self.carry = {s: Resample(w[target(s)], st) for s, st in joins.items()}
    self.carry_intra = {s: IntraScale(self.spatial_attention and target(s) != finest, sizes)
                        for s in joins}
    self.fusion = {s: InterScale(w[target(s)], self.inter_scale, self.spatial_attention, sizes)
                   for s in joins}
    self.to_compact = conv(self.compact_channels, 1)
    self.coder = self.coder_model()
    k, last = self.compact_index, len(self.scales) - 1
    self.rebuild_in = {s: Resample(w[s], (last - k) if i == last else -1)
                       for i, s in enumerate(self.scales)}
    self.refine = {s: ResidualBlock(w[s]) for s in self.scales}
    if self.adaptive_reconstruction:
      self.enhance = {s: AdaptiveEnhancement(w[s], self.reduction) for s in self.scales}
    self.heads = {s: conv(c, 3) for s, c in zip(self.scales, self.channels)}
    self.setup_refinements(self.scales)

  def _cascade(self, chain: Sequence[str], features: base.Pyramid) -> jax.Array:
    r = None
    for s in chain:
      e = self.intra[s](nn.leaky_relu(self.proj[s](features[s])))
      if r is None:
        r = e
      else:
        d = self.carry_intra[s](self.carry[s](r, e.shape[1], e.shape[2]))
        r = self.fusion[s](d, e)
    return r

  def fuse(self, features: base.Pyramid) -> jax.Array:
    """Semantic-guided cascaded fusion: pyramid -> compact representation (N, h, w, C_c)."""
    lower, upper = self.chains
    r = self._cascade(lower, features)
    if upper:
      u = self._cascade(upper, features)
      u = self.carry_intra[UPWARD_JOIN](self.carry[UPWARD_JOIN](u, r.shape[1], r.shape[2]))
      r = self.fusion[UPWARD_JOIN](u, r)
    return self.to_compact(r)

  def rebuild(self, compact_hat: jax.Array, sizes: Sequence[tuple[int, int]]
              ) -> dict[str, jax.Array]:
    """Adaptive feature reconstruction, coarsest to finest; `sizes` are (H, W) per scale."""
    out, t = {}, compact_hat
    for s, (h, w) in reversed(list(zip(self.scales, sizes))):
      t = self.refine[s](self.rebuild_in[s](t, h, w))
      if self.adaptive_reconstruction:
        t = self.enhance[s](t, compact_hat)
      out[s] = self.heads[s](t)
    return {s: out[s] for s in self.scales}

  def __call__(self, features: base.Pyramid, training: bool) -> dict[str, Any]:
    mode = self.train_quantization if training else "round"
    sizes = tuple(tuple(features[s].shape[1:3]) for s in self.scales)
    compact_hat, bits = self.coder(self.fuse(features), mode)
    bits = {f"compact/{k}": v for k, v in bits.items()}
    out, refine_bits = self.add_refinements(features, self.rebuild(compact_hat, sizes), mode)
    return {"features_hat": out, "bits": {**bits, **refine_bits}}

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def default_sizes(self, compact_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(H, W) per scale for a compact representation of `compact_shape`, assuming ratio-2 scales
    (coarser scales: ceil division, as stride-2 "SAME" layers)."""
    h, w, k = int(compact_shape[1]), int(compact_shape[2]), self.compact_index
    out = []
    for i in range(len(self.scales)):
      f = 2 ** abs(k - i)
      out.append((h * f, w * f) if i <= k else (-(-h // f), -(-w // f)))
    return tuple(out)

  @nn.nowrap
  def compact(self, params: Any, features: base.Pyramid) -> np.ndarray:
    """Host: the compact representation (N, h, w, compact_channels) of a pyramid, for the anchor
    path (channel reordering + tiling + a traditional codec, `anchor.FeatureAnchor`)."""
    feats = base.check_pyramid(features, self.scales)
    return np.asarray(base.compiled(self, "fuse")(params, feats))

  @nn.nowrap
  def reconstruct(self, params: Any, compact_hat: Any,
                  sizes: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Host: the pyramid rebuilt from a (decoded) compact representation; `sizes` default to
    `default_sizes`."""
    c = np.asarray(compact_hat, np.float32)
    if c.ndim != 4 or c.shape[-1] != self.compact_channels:
      raise errors.InvalidInputError(f"compact representation must be NHWC with "
                                     f"{self.compact_channels} channels, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
      raise errors.InvalidInputError("compact representation holds NaN/inf values")
    sizes = self.default_sizes(c.shape) if sizes is None else sizes
    sizes = tuple(tuple(int(v) for v in hw) for hw in sizes)
    if len(sizes) != len(self.scales) or any(len(hw) != 2 or min(hw) < 1 for hw in sizes):
      raise errors.InvalidInputError(f"sizes {sizes} must be one (H, W) per scale {self.scales}")
    return jax.tree.map(np.asarray, base.compiled(self, "rebuild", sizes)(params, c))

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    return {"compact": self.coder_model().build_tables(params["coder"]),
            **self.refine_tables(params)}

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    c = np.asarray(base.compiled(self, "fuse")(params, features))
    coder, coded = self.coder_model(), base.Coded()
    y_hat = coded.add("compact", *coder.encode(params["coder"], tables["compact"], c))
    sizes = tuple(tuple(features[s].shape[1:3]) for s in self.scales)
    coded.metadata["sizes"] = [list(hw) for hw in sizes]
    if self.coded_refine_scales:  # the refinements code the error of what the decoder rebuilds
      c_hat = base.compiled(coder, "synthesis", *c.shape[1:3])(params["coder"], y_hat)
      rebuilt = base.compiled(self, "rebuild", sizes)(params, c_hat)
      self.refine_streams(params, tables, features, coded, rebuilt)
    return coded.astuple()

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    base.require(metadata, ["sizes"], "metadata")
    sizes = self.coded_sizes(metadata)
    c_hat = self.coder_model().decode(params["coder"], tables["compact"],
                                      *base.part("compact", streams, shapes, metadata))
    out = base.compiled(self, "rebuild", sizes)(params, c_hat)
    out = self.with_refinements(
        params, out, self.decode_refinements(params, tables, streams, shapes, metadata))
    return jax.tree.map(np.asarray, out)
