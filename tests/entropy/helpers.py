"""Small fitting helpers shared by the entropy tests (imported by path, not a test module)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hssc_jax.entropy import factorized


def laplace_samples(n: int, channels: int, seed: int = 0) -> np.ndarray:
  """(n, channels) Laplace samples with per-channel scales from 0.5 to 8 and small offsets."""
  rng = np.random.default_rng(seed)
  scales = np.geomspace(0.5, 8.0, channels)
  return (rng.laplace(size=(n, channels)) * scales + rng.uniform(-1, 1, channels)).astype(np.float32)


def fit_factorized(samples: np.ndarray, steps: int = 300, seed: int = 0):
  """Fits an EntropyBottleneck to samples by minimizing noisy bits; returns its variables."""
  model = factorized.EntropyBottleneck()
  key = jax.random.PRNGKey(seed)
  x = jnp.asarray(samples)
  variables = model.init({"params": key, "noise": key}, x, "noise")
  opt = optax.adam(2e-2)
  state = opt.init(variables)

  @jax.jit
  def step(variables, state, key):
    loss_fn = lambda v: model.apply(v, x, "noise", rngs={"noise": key})[1].mean()
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(variables, updates), state, loss

  for i in range(steps):
    variables, state, _ = step(variables, state, jax.random.fold_in(key, i))
  return model, variables
