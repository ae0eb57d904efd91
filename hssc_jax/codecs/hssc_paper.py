"""HSSC as its paper runs it: SFTNet's compact representation coded by a traditional codec.

Zhang, Pan, Li, Wang, Kwong, "Learning Hierarchical and Spatial Semantic Correlations for Enhanced
Multi-Scale Feature Compression" (HSSC), IEEE Transactions on Broadcasting, 2025, fig. 1: part 1 ->
SFTNet fusion -> compact representation -> quantisation -> spatial-semantic channel reordering ->
tiling into one frame -> intra codec (VVC in the paper; HEVC through PyAV here, VVC where vvenc is
on PATH) -> decode -> untile -> SFTNet adaptive reconstruction -> part 2.

```
 c     = sigmoid(fuse(x))                                  in (0, 1)                         (V1)
 codes = rint(clip((c - lo) / (hi - lo), 0, 1) * 1023)     (lo, hi) fitted on training data  (V2)
 frame = tile(reorder(codes, perm))  -> inner codec at QP = qps[quality]                    (V3)
 c_hat = dequantize(undo(untile(decode(frame)), perm));   x_hat = rebuild(c_hat)
```

SFTNet (fuse, rebuild) is `hssc.HSSCCodec`'s; (V1) bounds c so that one 10-bit range covers it.
The range and, for a fixed order, the permutation are model constants fitted on compact
representations of training images after training (`post_training_constants`); a per-image order
travels in the bitstream (stream "compact/perm"). One SFTNet serves the whole QP sweep: `quality`
selects the QP.

Training proxy (the inner codec is not differentiable; `VideoCodecProxy`):
  c_tilde = c + s_q / 1023 * n,  n ~ N(0, 1)                                                 (P1)
  R_q = 1/2 sum_{k, i, j} [log2(1 + |dh codes| / s_q) + log2(1 + |dv codes| / s_q)]         (P2)
(P1) is Gaussian noise at the standard deviation s_q (in 10-bit codes) of the inner codec's error
at QP q, the HEVC error being close to signal-independent at these QPs; `qp_noise` defaults to
s(QP) = 10.3 x 2^((QP - 27) / 10), fitted to the feature anchor's measured error (105 codes^2 at
QP 27, 421 at QP 37). (P2) is a rate proxy of intra coding: the log-magnitude of the horizontal
and vertical differences of the codes (what intra prediction leaves, per map), in units of the
coding error; it rewards smooth, predictable maps. `measure_proxy` gives the real codec's error
next to s_q on held-out images (README).
"""

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import anchor as anchor_lib
from hssc_jax.codecs import base
from hssc_jax.codecs import inner as inner_lib
from hssc_jax.codecs import reorder as reorder_lib
from hssc_jax.codecs import tiling
from hssc_jax.codecs.hssc import HSSCCodec

BIT_DEPTH = 10
TOP = (1 << BIT_DEPTH) - 1
COMPACT = "compact"  # the one "scale" of the tiled frame, and the streams' prefix


def default_noise(qp: float) -> float:
  """s(QP), the inner codec's error std in 10-bit codes (module doc, (P1))."""
  return 10.3 * 2.0 ** ((float(qp) - 27.0) / 10.0)


class VideoCodecProxy(nn.Module):
  """(P1)-(P2): the differentiable stand-in for quantisation + the inner codec at QP `qps[q]`.

  Input: c in (0, 1) (N, h, w, C). Returns (c_tilde, {"frame": proxy bits per image}); "round"
  mode rounds to the 10-bit codes (no inner-codec error: what train_lib's rounded rate logs).
  """

  noise: Sequence[float]
  quality: Any = 0

  def __call__(self, c: jax.Array, mode: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    s = jnp.asarray(self.noise, jnp.float32)[self.quality]
    codes = c * TOP
    lg = lambda d: jnp.log2(1.0 + jnp.abs(d) / s)
    bits = 0.5 * (jnp.sum(lg(jnp.diff(codes, axis=2)), axis=(1, 2, 3))
                  + jnp.sum(lg(jnp.diff(codes, axis=1)), axis=(1, 2, 3)))
    if mode == "round":
      return jnp.round(codes) / TOP, {"frame": bits}
    n = jax.random.normal(self.make_rng("noise"), c.shape, c.dtype)
    return c + s / TOP * n, {"frame": bits}


class HSSCPaperCodec(HSSCCodec):
  """SFTNet + 10-bit quantisation + channel reordering + tiling + an inner codec (module doc).
  Streams: "compact/frame" (the inner codec's elementary stream), "compact/perm" with
  `reorder_fit="per_image"`.

  Attributes beyond SFTNet's (`HSSCCodec`; its hyperprior options are unused):
    qps: the inner codec's QP per quality (quality 0 = lowest rate); `qualities` must match.
    inner: the inner codec's name ("hevc", "vvc", "av1").
    compact_range: (lo, hi) of the 10-bit quantiser (V2); None: (0, 1) until fitted.
    reorder: channel reordering, "none", "global" or "global+local" (`codecs.reorder`).
    reorder_fit: "fixed" (`permutation`, fitted after training; nothing sent) or "per_image".
    permutation: the fixed order (raster cell k holds channel permutation[k]).
    qp_noise: s_q per quality (P1); empty: `default_noise` of each QP.
  """

  codec_id: ClassVar[str] = "hssc_paper"
  training_only: ClassVar[tuple[str, ...]] = HSSCCodec.training_only + ("qp_noise",)
  qps: Sequence[int] = (47, 42, 37, 32, 27, 22)
  inner: str = "hevc"
  compact_range: Any = None
  reorder: str = "global+local"
  reorder_fit: str = "fixed"
  permutation: Any = None
  qp_noise: Sequence[float] = ()

  @nn.nowrap
  def noise_per_quality(self) -> tuple[float, ...]:
    return tuple(float(v) for v in self.qp_noise) or tuple(default_noise(q) for q in self.qps)

  @nn.nowrap
  def coder_model(self) -> VideoCodecProxy:
    return VideoCodecProxy(self.noise_per_quality(), self.quality if self.qualities else 0)

  @nn.nowrap
  def _check_config(self) -> None:
    super()._check_config()
    if self.refine_scales:  # its streams are the inner codec's frame; a refinement is never coded
      raise errors.ConfigError("hssc_paper codes no refinement streams: refine_scales must be ()")
    if not self.qps or (self.qualities and len(self.qps) != self.qualities):
      raise errors.ConfigError(f"hssc_paper needs one QP per quality: {len(self.qps)} qps for "
                               f"{self.qualities} qualities")
    if len(self.noise_per_quality()) != len(self.qps) or min(self.noise_per_quality()) <= 0:
      raise errors.ConfigError(f"qp_noise needs one positive value per QP, got {self.qp_noise}")
    codec = inner_lib.get(self.inner)  # ConfigError when unknown
    for qp in self.qps:
      try:
        codec.check_qp(qp)
      except errors.InnerCodecError as e:
        raise errors.ConfigError(str(e)) from e
    if self.reorder not in reorder_lib.MODES or self.reorder_fit not in anchor_lib.REORDER_FITS:
      raise errors.ConfigError(f"reorder {self.reorder!r} / reorder_fit {self.reorder_fit!r}: "
                               f"expected one of {reorder_lib.MODES} / {anchor_lib.REORDER_FITS}")
    if self.compact_range is not None or self.permutation is not None:
      self.anchor()  # ConfigError for a bad fitted range or permutation

  def fuse(self, features: base.Pyramid) -> jax.Array:
    """(V1): the compact representation, squashed into (0, 1)."""
    return jax.nn.sigmoid(super().fuse(features))

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def qp(self) -> int:
    return int(self.qps[int(self.quality) if self.qualities else 0])

  @nn.nowrap
  def anchor(self) -> anchor_lib.FeatureAnchor:
    """The quantise-reorder-tile-code part (`anchor.FeatureAnchor` over the one map "compact")."""
    fixed = self.reorder != "none" and self.reorder_fit == "fixed"
    if fixed and self.permutation is None:
      raise errors.ConfigError("reorder_fit='fixed' needs the fitted `permutation` "
                               "(post_training_constants)")
    return anchor_lib.FeatureAnchor(
        tuple(self.compact_range or (0.0, 1.0)), inner_lib.get(self.inner), BIT_DEPTH, (COMPACT,),
        reorder=self.reorder, reorder_fit=self.reorder_fit,
        permutations={COMPACT: tuple(self.permutation)} if fixed else None)

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    return {}

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    c = np.asarray(base.compiled(self, "fuse")(params, features))
    streams = self.anchor().encode_maps({COMPACT: c[0]}, self.qp())
    return ({f"{COMPACT}/{k}": v for k, v in streams.items()}, {COMPACT: tuple(c.shape)}, {})

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    sizes = self.coded_sizes(metadata)
    base.require(shapes, [COMPACT], "shapes")
    (got,) = base.part(COMPACT, streams)
    c_hat = self.anchor().decode_maps(got, {COMPACT: tuple(shapes[COMPACT][1:])}, self.qp())
    return jax.tree.map(np.asarray, base.compiled(self, "rebuild", sizes)(
        params, c_hat[COMPACT][None]))

  @nn.nowrap
  def compacts(self, params: Any, batches: Sequence[base.Pyramid]) -> list[np.ndarray]:
    """(h, w, C) compact representations (V1) of every image of normalized `batches`."""
    fuse = base.compiled(self, "fuse")
    return [c for b in batches for c in np.asarray(fuse(params, b))]

  @nn.nowrap
  def post_training_constants(self, params: Any, batches: Sequence[base.Pyramid], pixels: float,
                              task_fn: Any) -> dict[str, Any]:
    """The 10-bit range (V2) and the fixed channel order, fitted on training compacts."""
    return fit_constants(self, params, self.compacts(params, batches))


def fit_constants(codec: HSSCPaperCodec, params: Any, compacts: Sequence[np.ndarray]
                  ) -> dict[str, Any]:
  """{"compact_range", "permutation"} from compact representations of training images: the
  global min/max and the channel order (the codec's `reorder` mode, "global+local" when "none")."""
  maps = [{COMPACT: c} for c in compacts]
  lo, hi = anchor_lib.fit_range(maps)
  grid = {COMPACT: tiling.grid_shape(compacts[0].shape[-1])}
  mode = codec.reorder if codec.reorder != "none" else "global+local"
  perm = reorder_lib.fit(maps, grid, mode)[COMPACT]
  return {"compact_range": [lo, hi], "permutation": [int(v) for v in perm]}


def measure_proxy(codec: HSSCPaperCodec, params: Any, compacts: Sequence[np.ndarray]
                  ) -> list[dict[str, float]]:
  """Per QP: the real inner codec's error std on the 10-bit codes of `compacts` (held-out
  images) next to the proxy's s_q (P1), and the frame's bits per compact sample."""
  out = []
  for q, qp in enumerate(codec.qps):
    coder = codec.clone(quality=q) if codec.qualities else codec
    a = coder.anchor()
    err, bits, n = 0.0, 0, 0
    for c in compacts:
      maps = {COMPACT: c}
      streams = a.encode_maps(maps, qp)
      dec = a.decode_maps(streams, {COMPACT: c.shape}, qp)[COMPACT]
      ref = anchor_lib.quantize(c, a.value_range, BIT_DEPTH).astype(np.float64)
      got = anchor_lib.quantize(dec, a.value_range, BIT_DEPTH).astype(np.float64)
      err += float(np.sum(np.square(got - ref)))
      bits += 8 * len(streams["frame"])
      n += c.size
    out.append({"qp": int(qp), "codec_std": float(np.sqrt(err / n)),
                "proxy_std": codec.noise_per_quality()[q], "bits_per_sample": bits / n})
  return out
