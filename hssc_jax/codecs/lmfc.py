"""L-MFC: learned mutual feature compression of a multi-scale pyramid.

Liu et al., "Learned Multi-Resolution Feature Compression" / "L-MFC", ICASSP 2023: the small-scale
(coarse) features are compressed by BFCNet, and the large-scale (fine) features are *predicted* from
the decoded small-scale ones by MFCNet, so the large scales cost few or no bits.

```
 coded scales (e.g. p4, p5) --fuse--> x_f --hyperprior (BFCNet)--> x_f_hat --unfuse--> p4_hat, p5_hat
 p4_hat, p5_hat --MFCNet: learned upsampling of each, merge, residual blocks--> p3_pred
 optional: r = p3 - p3_pred coded by a small hyperprior ("p3_residual" stream); p3_hat = p3_pred + r_hat
```

BFCNet removes *channel* redundancy by fusing the coded scales into `fused_channels` channels at the
coarsest coded resolution (learned stride-2 convolutions bring finer coded scales down, a 1x1
convolution reduces channels) and *spatial* redundancy through the analysis transform of the
hyperprior (`stages` = 0 keeps the latent on the coarsest coded grid, stride 32 for YOLO P5, so the
fine scales are not starved). MFCNet predicts each large scale from all decoded small scales.

Port choices the paper leaves open: the fusion/unfusion layers, the prediction network (deconv x2 +
residual blocks per predicted scale, coarse to fine, each conditioned on the next coarser decoded or
predicted scale and the coarsest decoded scale), and the optional residual stream.
"""

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import HyperpriorModel
from hssc_jax.layers import ResidualBlock, conv, deconv


def _resize_to(x: jax.Array, h: int, w: int) -> jax.Array:
  """Nearest/bilinear resize of NHWC x to (h, w) (used when scale ratios are not exactly 2)."""
  if x.shape[1] == h and x.shape[2] == w:
    return x
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear")


class Predictor(nn.Module):
  """MFCNet branch: predicts one finer scale from decoded (or already predicted) coarser ones.

  Each source is brought up by its own learned x2 transposed convolution and resized to (h, w);
  the sources are merged by a 1x1 convolution, then residual blocks and a 3x3 output convolution.
  """

  out_channels: int
  hidden: int = 64
  blocks: int = 2

  @nn.compact
  def __call__(self, sources: Sequence[jax.Array], h: int, w: int) -> jax.Array:
    parts = [_resize_to(nn.leaky_relu(deconv(self.hidden, 3, 2)(x)), h, w) for x in sources]
    x = parts[0] if len(parts) == 1 else conv(self.hidden, 1)(jnp.concatenate(parts, axis=-1))
    for _ in range(self.blocks):
      x = ResidualBlock(self.hidden)(x)
    return conv(self.out_channels, 3)(x)


class Downsample(nn.Module):
  """Learned downsampling (BFCNet): `levels` stride-2 3x3 convolutions with leaky ReLU between."""

  features: int
  levels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.levels):
      x = conv(self.features, 3, 2)(x)
      if i < self.levels - 1:
        x = nn.leaky_relu(x)
    return x


class LMFCCodec(base.FeatureCodec):
  """BFCNet on `coded_scales`, MFCNet prediction for the others (see module doc).

  Streams: "bfc/y", "bfc/z", and "<scale>_residual/y|z" for predicted scales when `residual`.
  """

  codec_id: ClassVar[str] = "lmfc"
  scales: Sequence[str] = ("p3", "p4", "p5")
  channels: Sequence[int] = (64, 128, 256)
  coded_scales: Sequence[str] = ("p4", "p5")
  fused_channels: int = 192
  latent_channels: int = 128
  hidden_channels: int = 128
  hyper_channels: int = 96
  stages: int = 1
  transform: str = "gdn"
  context_slices: int = 0
  predictor_hidden: int = 64
  predictor_blocks: int = 2
  residual: bool = False
  residual_latent_channels: int = 32
  residual_stages: int = 2
  train_quantization: str = "noise"

  @nn.nowrap
  def bfc_model(self) -> HyperpriorModel:
    return HyperpriorModel(out_channels=self.fused_channels, latent_channels=self.latent_channels,
                           hidden_channels=self.hidden_channels, hyper_channels=self.hyper_channels,
                           stages=self.stages, transform=self.transform,
                           context_slices=self.context_slices, **self.rate_kwargs())

  @nn.nowrap
  def residual_model(self, scale: str) -> HyperpriorModel:
    c = self.channels[list(self.scales).index(scale)]
    return HyperpriorModel(out_channels=c, latent_channels=self.residual_latent_channels,
                           hidden_channels=self.residual_latent_channels,
                           hyper_channels=max(8, self.residual_latent_channels // 2),
                           stages=self.residual_stages, transform=self.transform,
                           **self.rate_kwargs())

  @property
  def predicted_scales(self) -> list[str]:
    return [s for s in self.scales if s not in self.coded_scales]

  def setup(self):
    if not self.coded_scales or any(s not in self.scales for s in self.coded_scales):
      raise errors.ConfigError(f"coded_scales {self.coded_scales} must be a non-empty subset of "
                               f"scales {self.scales}")
    if len(self.channels) != len(self.scales):
      raise errors.ConfigError(f"{len(self.channels)} channel counts for scales {self.scales}")
    order = list(self.scales)
    if sorted(self.coded_scales, key=order.index) != order[-len(self.coded_scales):]:
      raise errors.ConfigError("coded_scales must be the coarsest scales (the last ones in `scales`)")
    ch = dict(zip(self.scales, self.channels))
    n = len(self.coded_scales)
    self.fuse_in = {s: Downsample(self.fused_channels, n - 1 - i) if i < n - 1
                    else conv(self.fused_channels, 3, 1) for i, s in enumerate(self.coded_scales)}
    self.fuse_out = conv(self.fused_channels, 1)
    self.unfuse = {s: Predictor(ch[s], self.predictor_hidden, 1) for s in self.coded_scales}
    self.bfc = self.bfc_model()
    self.predictors = {s: Predictor(ch[s], self.predictor_hidden, self.predictor_blocks)
                       for s in self.predicted_scales}
    if self.residual:
      self.residuals = {s: self.residual_model(s) for s in self.predicted_scales}

  def fuse(self, features: base.Pyramid) -> jax.Array:
    """Coded scales -> one tensor at the coarsest coded resolution (BFCNet input)."""
    coarsest = features[self.coded_scales[-1]]
    h, w = coarsest.shape[1], coarsest.shape[2]
    parts = []
    for s in self.coded_scales:  # finer coded scales come down by learned strided convolutions
      parts.append(nn.leaky_relu(_resize_to(self.fuse_in[s](features[s]), h, w)))
    return self.fuse_out(jnp.concatenate(parts, axis=-1))

  def split(self, fused_hat: jax.Array, sizes: tuple[tuple[int, int], ...]) -> dict[str, jax.Array]:
    """Decoded fused tensor -> coded scales at their sizes."""
    # Each branch upsamples x2 then resizes to its scale (for the coarsest one, back down).
    return {s: self.unfuse[s]([fused_hat], h, w) for s, (h, w) in zip(self.coded_scales, sizes)}

  def predict(self, decoded: dict[str, jax.Array], sizes: tuple[tuple[int, int], ...]
              ) -> dict[str, jax.Array]:
    """MFCNet: predicted scales, coarse to fine, each from every coarser decoded or predicted one."""
    avail = dict(decoded)
    order = list(self.scales)
    out = {}
    for s, (h, w) in reversed(list(zip(self.predicted_scales, sizes))):
      coarser = order[order.index(s) + 1:]
      out[s] = self.predictors[s]([avail[c] for c in coarser], h, w)
      avail[s] = out[s]
    return out

  def __call__(self, features: base.Pyramid, training: bool) -> dict[str, Any]:
    mode = self.train_quantization if training else "round"
    coded_sizes = tuple(features[s].shape[1:3] for s in self.coded_scales)
    pred_sizes = tuple(features[s].shape[1:3] for s in self.predicted_scales)
    fused_hat, bits = self.bfc(self.fuse(features), mode)
    bits = {f"bfc/{k}": v for k, v in bits.items()}
    out = self.split(fused_hat, coded_sizes)
    pred = self.predict(out, pred_sizes)
    for s, p in pred.items():
      if self.residual:
        r_hat, rb = self.residuals[s](features[s] - p, mode)
        p = p + r_hat
        bits.update({f"{s}_residual/{k}": v for k, v in rb.items()})
      out[s] = p
    return {"features_hat": {s: out[s] for s in self.scales}, "bits": bits}

  # ---- host side -------------------------------------------------------------------------------

  @nn.nowrap
  def build_tables(self, params: Any) -> dict[str, Any]:
    t = {"bfc": self.bfc_model().build_tables(params["bfc"])}
    if self.residual:
      for s in self.predicted_scales:
        t[f"{s}_residual"] = self.residual_model(s).build_tables(params[f"residuals_{s}"])
    return t

  @nn.nowrap
  def _decode_side(self, params, fused_hat, coded_sizes, pred_sizes) -> dict[str, np.ndarray]:
    """The decoder's reconstruction of coded and predicted scales (before any residual)."""
    out = _reconstruct_jit(self, coded_sizes, pred_sizes)(params, fused_hat)
    return jax.tree.map(np.asarray, out)

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    coded_sizes = tuple(tuple(features[s].shape[1:3]) for s in self.coded_scales)
    pred_sizes = tuple(tuple(features[s].shape[1:3]) for s in self.predicted_scales)
    fused = np.asarray(base.jitted_method(self, "fuse")(params, features))
    bfc = self.bfc_model()
    st, sh, me, y_hat = bfc.encode(params["bfc"], tables["bfc"], fused)
    streams = {f"bfc/{k}": v for k, v in st.items()}
    shapes = {f"bfc/{k}": v for k, v in sh.items()}
    meta = {f"bfc/{k}": v for k, v in me.items()}
    meta["sizes"] = [list(x) for x in coded_sizes + pred_sizes]
    if self.residual:
      fused_hat = base.jitted_method(bfc, "synthesis", (2, 3))(params["bfc"], y_hat, *fused.shape[1:3])
      recon = self._decode_side(params, fused_hat, coded_sizes, pred_sizes)
      for s in self.predicted_scales:
        r = features[s] - recon[s]
        st, sh, me, _ = self.residual_model(s).encode(params[f"residuals_{s}"],
                                                      tables[f"{s}_residual"], r)
        streams.update({f"{s}_residual/{k}": v for k, v in st.items()})
        shapes.update({f"{s}_residual/{k}": v for k, v in sh.items()})
        meta.update({f"{s}_residual/{k}": v for k, v in me.items()})
    return streams, shapes, meta

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    base.require(metadata, ["sizes"], "metadata")
    sizes = self.coded_sizes(metadata, list(self.coded_scales) + self.predicted_scales)
    n = len(self.coded_scales)
    coded_sizes = tuple(tuple(v) for v in sizes[:n])
    pred_sizes = tuple(tuple(v) for v in sizes[n:])
    sub = lambda d, p: {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(p + "/")}
    fused_hat = self.bfc_model().decode(params["bfc"], tables["bfc"], sub(streams, "bfc"),
                                        sub(shapes, "bfc"), sub(metadata, "bfc"))
    out = self._decode_side(params, fused_hat, coded_sizes, pred_sizes)
    if self.residual:
      for s in self.predicted_scales:
        p = f"{s}_residual"
        out[s] = out[s] + self.residual_model(s).decode(
            params[f"residuals_{s}"], tables[p], sub(streams, p), sub(shapes, p), sub(metadata, p))
    return {s: out[s] for s in self.scales}


def _reconstruct(module: LMFCCodec, fused_hat, coded_sizes, pred_sizes):
  out = module.split(fused_hat, coded_sizes)
  out.update(module.predict(out, pred_sizes))
  return out


@functools.lru_cache(maxsize=64)
def _reconstruct_jit(module: LMFCCodec, coded_sizes, pred_sizes):
  return jax.jit(lambda p, fh: module.apply({"params": p}, fh, coded_sizes, pred_sizes,
                                            method=_reconstruct))
