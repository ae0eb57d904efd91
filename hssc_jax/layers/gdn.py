"""Generalized divisive normalization (GDN) and its inverse.

Balle, Laparra, Simoncelli, "Density modeling of images using a generalized normalization
transformation", ICLR 2016, eq. (6):  y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2).
The inverse (IGDN, used in synthesis transforms) multiplies instead of dividing. The simplified form
of Johnston et al., "Computationally efficient neural image compression" (2019), uses |x| and no
square root: y_i = x_i / (beta_i + sum_j gamma_ij |x_j|).

beta and gamma are kept non-negative by the reparameterization of tensorflow-compression / CompressAI:
value = (max(param, sqrt(floor + pedestal)))^2 - pedestal.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_PEDESTAL = 2.0**-36


def _nonneg(param: jax.Array, minimum: float) -> jax.Array:
  bound = (minimum + _PEDESTAL) ** 0.5
  return jnp.square(jnp.maximum(param, bound)) - _PEDESTAL


class GDN(nn.Module):
  """GDN over the channel (last) axis; `inverse=True` gives IGDN."""

  inverse: bool = False
  simplified: bool = False
  beta_min: float = 1e-6
  gamma_init: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    beta = self.param("beta", lambda k: jnp.sqrt(jnp.ones((c,)) + _PEDESTAL))
    gamma = self.param("gamma", lambda k: jnp.sqrt(self.gamma_init * jnp.eye(c) + _PEDESTAL))
    beta = _nonneg(beta, self.beta_min)
    gamma = _nonneg(gamma, 0.0)
    pooled = jnp.abs(x) if self.simplified else jnp.square(x)
    norm = jnp.einsum("...j,ij->...i", pooled, gamma) + beta
    if not self.simplified:
      norm = jnp.sqrt(norm)
    return x * norm if self.inverse else x / norm
