"""Quantization for learned entropy models: uniform noise, straight-through rounding, and bounds.

Balle et al., "Variational image compression with a scale hyperprior" (ICLR 2018), eq. (4): during
training quantization is replaced by additive uniform noise U(-1/2, 1/2), so the rate is a
differentiable upper bound. Minnen and Singh (ICIP 2020) sec. 2: "mixed" quantization feeds the
synthesis straight-through rounded values while the rate uses noise. At evaluation, values are rounded
and the gradient of rounding is taken as one (straight-through estimator).

Modes (`Mode`):
  noise  training: y + u, u ~ U(-1/2, 1/2); rate and reconstruction both see the noisy value.
  ste    training option: round with a straight-through gradient; rate and reconstruction rounded.
  mixed  training option: reconstruction rounded (straight-through), rate from the noisy value.
  round  evaluation: round with a straight-through gradient (what the bitstream carries).
"""

import functools

import jax
import jax.numpy as jnp

MODES = ("noise", "ste", "mixed", "round")


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")


def needs_rng(mode: str) -> bool:
  check_mode(mode)
  return mode in ("noise", "mixed")


def ste_round(x: jax.Array) -> jax.Array:
  """Rounds to the nearest integer (half to even, as numpy) with gradient one."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def add_noise(x: jax.Array, rng: jax.Array) -> jax.Array:
  """x + U(-1/2, 1/2), the training proxy for rounding."""
  return x + jax.random.uniform(rng, x.shape, x.dtype, -0.5, 0.5)


def quantize(x: jax.Array, mode: str, rng: jax.Array | None = None,
             offset: jax.Array | float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Quantizes `x` around `offset` (e.g. a predicted mean).

  Returns:
    (x_hat, x_rate): the value passed on to the synthesis transform and the value whose likelihood
    gives the rate. They differ only in "mixed" mode.
  """
  check_mode(mode)
  if needs_rng(mode) and rng is None:
    raise ValueError(f"quantization mode {mode!r} needs an rng")
  if mode == "noise":
    noisy = add_noise(x, rng)
    return noisy, noisy
  rounded = ste_round(x - offset) + offset
  if mode == "mixed":
    return rounded, add_noise(x, rng)
  return rounded, rounded


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def lower_bound(x: jax.Array, bound: float) -> jax.Array:
  """max(x, bound) whose gradient still pushes x up when it sits below the bound.

  As CompressAI's LowerBound: the gradient passes where x >= bound or where a descent step would
  increase x (negative gradient), so a parameter stuck under the bound can recover.
  """
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), x


def _lower_bound_bwd(bound, x, g):
  pass_through = (x >= bound) | (g < 0)
  return (jnp.where(pass_through, g, jnp.zeros_like(g)),)


lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)
