"""Refinement of decoded scales: what a fused latent misses of one scale, coded on its own.

A codec that codes several scales through one fused latent (L-MFC's BFCNet, HSSC's compact
representation, HSC's two latents) can carry one of them poorly whatever its rate: on
pseudo-labelled Kodak L-MFC (before stop 62) and HSSC reach 0.89-0.92 mAP with P5 left
uncompressed but at most 0.48 and 0.55 from their fused latents left unquantized (README, "Kodak").
A refinement codes the error e = x - x_hat of such a scale with a small mean-scale hyperprior of
its own (a "<scale>_refine" stream) and adds its decoded output back through a zero-initialised
1x1 convolution, so a refinement added to a trained codec starts as the identity. A variable-rate
codec codes it from quality `refine_from` up: below it the refinement is neither added nor paid
for (in training too), so the low qualities cost what they did.

This is not a step of any of the four papers; docs/port_notes.md ("L-MFC", "HSSC", "HSC") says
why it exists and where each codec adds it.
"""

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.codecs import base
from hssc_jax.codecs.hyperprior import HyperpriorModel, model_from
from hssc_jax.layers import conv


class Refinement(nn.Module):
  """Mixin of a `base.FeatureCodec` that also derives from `CoderOptions`: the refinement fields
  and the training (`add_refinements`), encoder (`refine_streams`) and decoder
  (`decode_refinements`) steps. Call `setup_refinements` from `setup`; `refined` adds decoded
  refinements to decoded scales."""

  refine_scales: Sequence[str] = ()
  refine_latent_channels: int = 64
  refine_stages: int = 1
  refine_from: int = 0  # the lowest quality coding the refinements (below: none, in training too)
  # added after models were shipped: a codec lists them in its `added_fields`
  REFINE_FIELDS: ClassVar[tuple[str, ...]] = (
      "refine_scales", "refine_latent_channels", "refine_stages", "refine_from")

  @nn.nowrap
  def small_model(self, scale: str, width: int, stages: int) -> HyperpriorModel:
    """A hyperprior `width` channels wide over one scale's channels (residuals, refinements)."""
    return model_from(self, self.channels[list(self.scales).index(scale)], latent_channels=width,
                      hidden_channels=width, hyper_channels=max(8, width // 2), stages=stages,
                      context_slices=0)

  @nn.nowrap
  def refine_model(self, scale: str) -> HyperpriorModel:
    """The hyperprior of one refined scale's error (before `refine_out`)."""
    return self.small_model(scale, self.refine_latent_channels, self.refine_stages)

  @property
  def coded_refine_scales(self) -> tuple[str, ...]:
    """Host: the refined scales whose streams this model's (static) quality codes."""
    return tuple(self.refine_scales) if int(self.quality) >= self.refine_from else ()

  @nn.nowrap
  def setup_refinements(self, allowed: Sequence[str]) -> None:
    """From `setup`: ConfigError unless the refined scales are among `allowed` (those the codec
    decodes before any prediction) and `refine_from` is a quality; builds the refiners."""
    if any(s not in allowed for s in self.refine_scales):
      raise errors.ConfigError(f"refine_scales {tuple(self.refine_scales)} must be among "
                               f"{tuple(allowed)}")
    if self.refine_from and not 0 < self.refine_from < self.qualities:
      raise errors.ConfigError(f"refine_from {self.refine_from} must be 0 or a quality in 1.."
                               f"{self.qualities - 1} (qualities={self.qualities})")
    ch = dict(zip(self.scales, self.channels))
    self.refiners = {s: self.refine_model(s) for s in self.refine_scales}
    self.refine_out = {s: conv(ch[s], 1, kernel_init=nn.initializers.zeros)
                       for s in self.refine_scales}

  def add_refinements(self, features: base.Pyramid, decoded: dict[str, jax.Array], mode: str
                      ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Training/evaluation forward: (`decoded` with the refinements added, their bits)."""
    refinements, bits = {}, {}
    # below quality `refine_from` the refinement is neither added nor paid for (quality: traced;
    # on = 1.0 from refine_from up, so the products are exact)
    on = (jnp.asarray(self.quality) >= self.refine_from).astype(jnp.float32)
    for s in self.refine_scales:
      r_hat, rb = self.refiners[s](features[s] - decoded[s], mode)
      refinements[s] = r_hat * on
      bits.update({f"{s}_refine/{k}": v * on for k, v in rb.items()})
    return self.refined(decoded, refinements), bits

  def refined(self, decoded: dict[str, jax.Array], refinements: dict[str, jax.Array]
              ) -> dict[str, jax.Array]:
    """The decoded scales with their decoded refinements (the refine models' outputs) added."""
    return {s: x + self.refine_out[s](refinements[s]) if s in refinements else x
            for s, x in decoded.items()}

  @nn.nowrap
  def refine_tables(self, params: Any) -> dict[str, Any]:
    return {f"{s}_refine": self.refine_model(s).build_tables(params[f"refiners_{s}"])
            for s in self.refine_scales}

  @nn.nowrap
  def refine_streams(self, params, tables, features, coded_part: base.Coded,
                     decoded: dict[str, Any]) -> dict[str, jax.Array]:
    """Encoder: codes each refined scale's error against `decoded` into `coded_part`; returns the
    decoded refinements (the refine models' outputs) the decoder will have."""
    out = {}
    for s in self.coded_refine_scales:
      model = self.refine_model(s)
      y_hat = coded_part.add(f"{s}_refine", *model.encode(
          params[f"refiners_{s}"], tables[f"{s}_refine"], np.asarray(features[s] - decoded[s])))
      out[s] = base.compiled(model, "synthesis", *features[s].shape[1:3])(
          params[f"refiners_{s}"], y_hat)
    return out

  @nn.nowrap
  def decode_refinements(self, params, tables, streams, shapes, metadata
                         ) -> dict[str, jax.Array]:
    """Decoder: the decoded refinements of this quality's refined scales."""
    out = {}
    for s in self.coded_refine_scales:
      p = f"{s}_refine"
      out[s] = self.refine_model(s).decode(params[f"refiners_{s}"], tables[p],
                                           *base.part(p, streams, shapes, metadata))
    return out

  @nn.nowrap
  def with_refinements(self, params, decoded: dict[str, Any], refinements: dict[str, Any]
                       ) -> dict[str, Any]:
    """Host: `decoded` with `refinements` added (unchanged when there are none)."""
    if not refinements:
      return decoded
    return base.compiled(self, "refined")(params, decoded, refinements)
