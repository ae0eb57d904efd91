"""One factorized prior of the hyper-latents per quality, fitted after training.

A variable-rate codec scales its latents by one gain vector per quality (Cui et al., "Asymmetric
gained deep image compression with continuous rate adaptation", CVPR 2021), so its hyper-latent
z = h_a(y) is distributed differently at every quality, yet one factorized prior (Balle et al.,
ICLR 2018, appendix 6.1) codes z at all of them: at the base codec's lowest quality z took a
quarter of the bits. `fit` gives each quality a prior of its own, initialised from the shared one
and fitted to the rounded z of training features by maximum likelihood (the discrete likelihood the
range coder pays, P(k) = c(k + 1/2) - c(k - 1/2)) with every transform frozen. z is quantized by
plain rounding, so z_hat, the decoded features and the detector's accuracy do not change: only the
z streams do.

  codec, params, report = z_priors.fit(codec, params, pyramids)   # raw (unnormalized) features
"""

from typing import Any, Iterable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hssc_jax import errors
from hssc_jax.entropy import factorized

Path = tuple[str, ...]


def collect(codec: Any, params: Any, pyramids: Iterable[Mapping[str, Any]]
            ) -> dict[Path, np.ndarray]:
  """{entropy-bottleneck module path: rounded z, (Q, N, C)} of the test-time forward of every
  quality over `pyramids` (raw features; each normalized as the codec does)."""
  qualities = int(codec.qualities)
  forward = jax.jit(lambda p, f, q: codec.clone(quality=q).apply(
      {"params": p}, f, False, mutable=["intermediates"])[1])  # one compile: q is traced
  found: dict[Path, list[list[np.ndarray]]] = {}
  for pyramid in pyramids:
    feats = codec.normalize({s: jnp.asarray(pyramid[s], jnp.float32) for s in codec.scales})
    for q in range(qualities):
      flat = flax.traverse_util.flatten_dict(dict(forward(params, feats, q)["intermediates"]))
      for key, (z,) in flat.items():
        if key[-1] != "z":
          continue
        z = np.rint(np.asarray(z, np.float64))
        found.setdefault(key[:-1], [[] for _ in range(qualities)])[q].append(
            z.reshape(-1, z.shape[-1]))
  if not found:
    raise errors.ConfigError(f"{codec.codec_id}: no factorized prior of z to fit")
  return {k: np.stack([np.concatenate(v) for v in per_q]) for k, per_q in found.items()}


def histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(grid (K,), counts (Q, K, C)) of rounded `values` (Q, N, C): the likelihood of the samples is
  a weighted sum over the integers between their extremes, so a fit costs K, not N, per step."""
  values = np.asarray(values, np.int64)
  lo, hi = int(values.min()), int(values.max())
  grid = np.arange(lo, hi + 1)
  q, _, c = values.shape
  flat = (values - lo) * c + np.arange(c)  # (value, channel) as one index
  counts = np.stack([np.bincount(flat[i].ravel(), minlength=grid.size * c).reshape(grid.size, c)
                     for i in range(q)])
  return grid, counts


def mean_bits(density: Any, grid: jax.Array, counts: jax.Array) -> jax.Array:
  """(Q,) mean -log2 P(z) per element of each quality's samples, given as their `histogram`,
  under a per-quality `density` stack."""
  points = jnp.broadcast_to(grid[:, None], counts.shape[1:]).astype(jnp.float32)
  total = counts.sum(axis=(1, 2))
  return jax.vmap(lambda d, n: (n * factorized.bits(d, points)).sum())(density, counts) / total


def fit_density(shared: Mapping[str, Any], values: np.ndarray, steps: int = 1500,
                learning_rate: float = 3e-3) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """(per-quality density stack, bits per element before (Q,), after (Q,)): Adam on the whole
  set of rounded `values` (Q, N, C), starting from the `shared` density at every quality."""
  q = values.shape[0]
  density = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32),
                                                    (q, *np.shape(a))), dict(shared))
  grid, counts = (jnp.asarray(a, jnp.float32) for a in histogram(values))
  tx = optax.adam(learning_rate)
  loss = lambda d: mean_bits(d, grid, counts).sum()

  @jax.jit
  def step(d, opt):
    grads = jax.grad(loss)(d)
    updates, opt = tx.update(grads, opt, d)
    return optax.apply_updates(d, updates), opt

  start = density
  before = np.asarray(mean_bits(start, grid, counts))
  opt = tx.init(density)
  for _ in range(steps):
    density, opt = step(density, opt)
  after = np.asarray(mean_bits(density, grid, counts))
  # Per quality, the fit or the shared prior, whichever is cheaper on these values.
  keep = after < before
  density = jax.tree.map(lambda new, old: jnp.where(
      keep.reshape(-1, *([1] * (new.ndim - 1))), new, old), density, start)
  return jax.tree.map(np.asarray, density), before, np.minimum(after, before)


def fit(codec: Any, params: Any, pyramids: Iterable[Mapping[str, Any]], steps: int = 1500,
        learning_rate: float = 3e-3) -> tuple[Any, Any, dict[str, Any]]:
  """(codec with `z_priors`, its parameters, report): every factorized prior of z in `codec`
  replaced by one per quality fitted on `pyramids`. The report gives, per module path, the mean
  bits per z element of each quality before and after on those features."""
  if not codec.qualities or codec.z_priors:
    raise errors.ConfigError("z priors are fitted once, on a variable-rate codec (qualities > 0) "
                             "with one shared prior of z")
  samples = collect(codec, params, pyramids)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  report = {}
  for path, values in samples.items():
    key = path + ("density",)
    shared = {k[-1]: v for k, v in flat.items() if k[:-1] == key}
    if not shared:
      raise errors.ConfigError(f"no density parameters at {'/'.join(key)}")
    density, before, after = fit_density(shared, values, steps, learning_rate)
    for name, value in density.items():
      flat[key + (name,)] = value
    report["/".join(path)] = {"elements": int(values.shape[1] * values.shape[2]),
                              "bits_before": before.tolist(), "bits_after": after.tolist()}
  return codec.clone(z_priors=True), flax.traverse_util.unflatten_dict(flat), report
