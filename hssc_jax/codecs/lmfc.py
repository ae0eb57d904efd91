"""L-MFC: learned mutual feature compression of a multi-scale pyramid.

Liu et al., "Learned Multi-Resolution Feature Compression" / "L-MFC", ICASSP 2023: the small-scale
(coarse) features are compressed by BFCNet, and the large-scale (fine) features are *predicted* from
the decoded small-scale ones by MFCNet, so the large scales cost few or no bits.

```
 coded scales (e.g. p4, p5) --fuse--> x_f --hyperprior (BFCNet)--> x_f_hat --unfuse--> p4_hat, p5_hat
 p4_hat, p5_hat --MFCNet: learned upsampling of each, merge, residual blocks--> p3_pred
 optional: r = p3 - p3_pred coded by a small hyperprior ("p3_residual" stream); p3_hat = p3_pred + r_hat
 optional (`refine_scales`): e = p5 - p5_hat coded by a small hyperprior ("p5_refine" stream),
   added back before MFCNet runs, so a scale the fused latent carries poorly gets bits of its own;
   a variable-rate model codes it from quality `refine_from` up (the low qualities cost no more)
```

BFCNet removes *channel* redundancy by fusing the coded scales into `fused_channels` channels at the
coarsest coded resolution (learned stride-2 convolutions bring finer coded scales down, a 1x1
convolution reduces channels) and *spatial* redundancy through the analysis transform of the
hyperprior (`stages` = 0 keeps the latent on the coarsest coded grid, stride 32 for YOLO P5, so the
fine scales are not starved). MFCNet predicts each large scale from all decoded small scales.

Port decisions: docs/port_notes.md, "L-MFC (Liu et al., ICASSP 2023)".
"""

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
    parts = [resize_to(nn.leaky_relu(deconv(self.hidden, 3, 2)(x)), h, w) for x in sources]
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


class LMFCCodec(base.FeatureCodec, CoderOptions, Refinement):
  """BFCNet on `coded_scales`, MFCNet prediction for the others (see module doc).

  Streams: "bfc/y", "bfc/z", and "<scale>_residual/y|z" for predicted scales when `residual`.
  The `CoderOptions` fields shape BFCNet's hyperprior over the fused representation; the
  `Refinement` fields refine coded scales before MFCNet predicts from them ("<scale>_refine/y|z").
  """

  codec_id: ClassVar[str] = "lmfc"
  coded_scales: Sequence[str] = ("p4", "p5")
  fused_channels: int = 192
  # MFCNet
  predictor_hidden: int = 64
  predictor_blocks: int = 2
  # optional residual coding of the predicted scales
  residual: bool = False
  residual_latent_channels: int = 32
  residual_stages: int = 2
  added_fields: ClassVar[tuple[str, ...]] = Refinement.REFINE_FIELDS  # older models' fingerprints

  @nn.nowrap
  def bfc_model(self) -> HyperpriorModel:
    return model_from(self, self.fused_channels)

  @nn.nowrap
  def residual_model(self, scale: str) -> HyperpriorModel:
    return self.small_model(scale, self.residual_latent_channels, self.residual_stages)

  @property
  def predicted_scales(self) -> list[str]:
    return [s for s in self.scales if s not in self.coded_scales]

  def setup(self):
    if not self.coded_scales or any(s not in self.scales for s in self.coded_scales):
      raise errors.ConfigError(f"coded_scales {self.coded_scales} must be a non-empty subset of "
                               f"scales {self.scales}")
    self.check_fields()
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
    self.setup_refinements(self.coded_scales)

  def fuse(self, features: base.Pyramid) -> jax.Array:
    """Coded scales -> one tensor at the coarsest coded resolution (BFCNet input)."""
    coarsest = features[self.coded_scales[-1]]
    h, w = coarsest.shape[1], coarsest.shape[2]
    parts = []
    for s in self.coded_scales:  # finer coded scales come down by learned strided convolutions
      parts.append(nn.leaky_relu(resize_to(self.fuse_in[s](features[s]), h, w)))
    return self.fuse_out(jnp.concatenate(parts, axis=-1))

  def unfuse_coded(self, fused_hat: jax.Array, sizes: tuple[tuple[int, int], ...]
                   ) -> dict[str, jax.Array]:
    """Decoded fused tensor -> coded scales at their sizes (the `unfuse` branches)."""
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
    out = self.unfuse_coded(fused_hat, coded_sizes)
    out, refine_bits = self.add_refinements(features, out, mode)
    bits.update(refine_bits)
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
    t.update(self.refine_tables(params))
    if self.residual:
      for s in self.predicted_scales:
        t[f"{s}_residual"] = self.residual_model(s).build_tables(params[f"residuals_{s}"])
    return t

  def reconstruct(self, coded: dict[str, jax.Array], pred_sizes: tuple[tuple[int, int], ...]
                  ) -> dict[str, jax.Array]:
    """The decoder's coded (refined) and predicted scales (before residuals)."""
    return {**coded, **self.predict(coded, pred_sizes)}

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    coded_sizes = tuple(tuple(features[s].shape[1:3]) for s in self.coded_scales)
    pred_sizes = tuple(tuple(features[s].shape[1:3]) for s in self.predicted_scales)
    fused = np.asarray(base.compiled(self, "fuse")(params, features))
    bfc = self.bfc_model()
    coded = base.Coded()
    y_hat = coded.add("bfc", *bfc.encode(params["bfc"], tables["bfc"], fused))
    coded.metadata["sizes"] = [list(x) for x in coded_sizes + pred_sizes]
    if self.residual or self.coded_refine_scales:
      fused_hat = base.compiled(bfc, "synthesis", *fused.shape[1:3])(params["bfc"], y_hat)
      scales = base.compiled(self, "unfuse_coded", coded_sizes)(params, fused_hat)
      scales = self.with_refinements(
          params, scales, self.refine_streams(params, tables, features, coded, scales))
    if self.residual:
      recon = base.compiled(self, "reconstruct", pred_sizes)(params, scales)
      for s in self.predicted_scales:
        coded.add(f"{s}_residual", *self.residual_model(s).encode(
            params[f"residuals_{s}"], tables[f"{s}_residual"], features[s] - np.asarray(recon[s])))
    return coded.astuple()

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    base.require(metadata, ["sizes"], "metadata")
    sizes = self.coded_sizes(metadata, list(self.coded_scales) + self.predicted_scales)
    n = len(self.coded_scales)
    fused_hat = self.bfc_model().decode(params["bfc"], tables["bfc"],
                                        *base.part("bfc", streams, shapes, metadata))
    scales = base.compiled(self, "unfuse_coded", sizes[:n])(params, fused_hat)
    scales = self.with_refinements(
        params, scales, self.decode_refinements(params, tables, streams, shapes, metadata))
    out = jax.tree.map(np.asarray, base.compiled(self, "reconstruct", sizes[n:])(params, scales))
    if self.residual:
      for s in self.predicted_scales:
        p = f"{s}_residual"
        out[s] = out[s] + self.residual_model(s).decode(
            params[f"residuals_{s}"], tables[p], *base.part(p, streams, shapes, metadata))
    return {s: out[s] for s in self.scales}
