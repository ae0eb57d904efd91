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


class LMFCCodec(base.FeatureCodec, CoderOptions):
  """BFCNet on `coded_scales`, MFCNet prediction for the others (see module doc).

  Streams: "bfc/y", "bfc/z", and "<scale>_residual/y|z" for predicted scales when `residual`.
  The `CoderOptions` fields shape BFCNet's hyperprior over the fused representation.
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
  # optional refinement of coded scales: what the fused latent misses, coded on its own
  refine_scales: Sequence[str] = ()
  refine_latent_channels: int = 64
  refine_stages: int = 1
  refine_from: int = 0  # the lowest quality coding the refinements (below: none, in training too)
  added_fields: ClassVar[tuple[str, ...]] = (  # older zoo models keep their fingerprints
      "refine_scales", "refine_latent_channels", "refine_stages", "refine_from")

  @nn.nowrap
  def bfc_model(self) -> HyperpriorModel:
    return model_from(self, self.fused_channels)

  @nn.nowrap
  def small_model(self, scale: str, width: int, stages: int) -> HyperpriorModel:
    """A hyperprior `width` channels wide over one scale's channels (residuals, refinements)."""
    return model_from(self, self.channels[list(self.scales).index(scale)], latent_channels=width,
                      hidden_channels=width, hyper_channels=max(8, width // 2), stages=stages,
                      context_slices=0)

  @nn.nowrap
  def residual_model(self, scale: str) -> HyperpriorModel:
    return self.small_model(scale, self.residual_latent_channels, self.residual_stages)

  @nn.nowrap
  def refine_model(self, scale: str) -> HyperpriorModel:
    """The hyperprior of one refined scale's error; its output passes a zero-initialised 1x1
    convolution (`refine_out`) before it is added, so a refinement added to a trained model starts
    as the identity."""
    return self.small_model(scale, self.refine_latent_channels, self.refine_stages)

  @property
  def coded_refine_scales(self) -> tuple[str, ...]:
    """Host: the refined scales whose streams this model's (static) quality codes."""
    return tuple(self.refine_scales) if int(self.quality) >= self.refine_from else ()

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
    if any(s not in self.coded_scales for s in self.refine_scales):
      raise errors.ConfigError(f"refine_scales {tuple(self.refine_scales)} must be coded scales "
                               f"{tuple(self.coded_scales)}")
    if self.refine_from and not 0 < self.refine_from < self.qualities:
      raise errors.ConfigError(f"refine_from {self.refine_from} must be 0 or a quality in 1.."
                               f"{self.qualities - 1} (qualities={self.qualities})")
    self.refiners = {s: self.refine_model(s) for s in self.refine_scales}
    self.refine_out = {s: conv(ch[s], 1, kernel_init=nn.initializers.zeros)
                       for s in self.refine_scales}

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
    refinements = {}
    # below quality `refine_from` the refinement is neither added nor paid for (quality: traced)
    on = (jnp.asarray(self.quality) >= self.refine_from).astype(jnp.float32)
    for s in self.refine_scales:  # (on = 1.0 from refine_from up: the product is exact)
      r_hat, rb = self.refiners[s](features[s] - out[s], mode)
      refinements[s] = r_hat * on
      bits.update({f"{s}_refine/{k}": v * on for k, v in rb.items()})
    out = self.refined(out, refinements)
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
    for s in self.refine_scales:
      t[f"{s}_refine"] = self.refine_model(s).build_tables(params[f"refiners_{s}"])
    if self.residual:
      for s in self.predicted_scales:
        t[f"{s}_residual"] = self.residual_model(s).build_tables(params[f"residuals_{s}"])
    return t

  def refined(self, coded: dict[str, jax.Array], refinements: dict[str, jax.Array]
              ) -> dict[str, jax.Array]:
    """The coded scales with their decoded refinements (the refine models' outputs) added."""
    return {s: x + self.refine_out[s](refinements[s]) if s in refinements else x
            for s, x in coded.items()}

  def reconstruct(self, coded: dict[str, jax.Array], pred_sizes: tuple[tuple[int, int], ...]
                  ) -> dict[str, jax.Array]:
    """The decoder's coded (refined) and predicted scales (before residuals)."""
    return {**coded, **self.predict(coded, pred_sizes)}

  @nn.nowrap
  def refine_streams(self, params, tables, features, coded_part: base.Coded,
                     coded: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Encoder: codes each refined scale's error against `coded`; returns the decoded refinements
    (the refine models' outputs) the decoder will have."""
    decoded = {}
    for s in self.coded_refine_scales:
      model = self.refine_model(s)
      y_hat = coded_part.add(f"{s}_refine", *model.encode(
          params[f"refiners_{s}"], tables[f"{s}_refine"], np.asarray(features[s] - coded[s])))
      decoded[s] = base.compiled(model, "synthesis", *features[s].shape[1:3])(
          params[f"refiners_{s}"], y_hat)
    return decoded

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
      refinements = self.refine_streams(params, tables, features, coded, scales)
      if refinements:
        scales = base.compiled(self, "refined")(params, scales, refinements)
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
    refinements = {}
    for s in self.coded_refine_scales:
      p, model = f"{s}_refine", self.refine_model(s)
      refinements[s] = model.decode(params[f"refiners_{s}"], tables[p],
                                    *base.part(p, streams, shapes, metadata))
    if refinements:
      scales = base.compiled(self, "refined")(params, scales, refinements)
    out = jax.tree.map(np.asarray, base.compiled(self, "reconstruct", sizes[n:])(params, scales))
    if self.residual:
      for s in self.predicted_scales:
        p = f"{s}_residual"
        out[s] = out[s] + self.residual_model(s).decode(
            params[f"residuals_{s}"], tables[p], *base.part(p, streams, shapes, metadata))
    return {s: out[s] for s in self.scales}
