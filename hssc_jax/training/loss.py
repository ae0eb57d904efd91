"""The rate-distortion objective, computed outside the codec module (CompressAI habit).

  L = R + lambda * D (+ task_weight * T)
  R = mean over images of sum over streams of bits / (H x W of the input image)   [bpp]
  D = sum_s w_s * mean((f_s - f_hat_s)^2)                                          [feature MSE]
      or, when the codec supplies per-image weights out["distortion_weights"] = {s: (N,)} (e.g.
      MFIBA's importance), D = mean_n sum_s w_s * v_s[n] * mse_s[n] with mse_s[n] per image
  T = mean((head(f) - head(f_hat))^2)    optional distillation through the detector's head

The task term is the "task-aware" loss: it weights feature errors by how much they move the
detector's raw outputs (Liu et al. 2025 and Zhang et al. 2025 both train with a task term).
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def rate_bpp(bits: Mapping[str, jax.Array], pixels: jax.Array | float) -> tuple[jax.Array, dict]:
  """Mean bits per pixel over the batch, total and per stream."""
  per_stream = {k: jnp.mean(v / pixels) for k, v in bits.items()}
  total = sum(per_stream.values()) if per_stream else jnp.zeros(())
  return total, per_stream


def feature_mse(features: Mapping[str, jax.Array], features_hat: Mapping[str, jax.Array]
                ) -> dict[str, jax.Array]:
  return {s: jnp.mean(jnp.square(features[s] - features_hat[s])) for s in features}


def weighted_distortion(features: Mapping[str, jax.Array], features_hat: Mapping[str, jax.Array],
                        weights: Mapping[str, jax.Array], scale_weights: Mapping[str, float]
                        ) -> jax.Array:
  """mean_n sum_s scale_weights[s] * weights[s][n] * mse_s[n] (scales without weights: 1)."""
  total = 0.0
  for s in features:
    err = jnp.square(features[s] - features_hat[s])
    per_image = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
    w = weights[s] if s in weights else jnp.ones_like(per_image)
    total = total + scale_weights.get(s, 1.0) * jnp.mean(w * per_image)
  return total


def rate_distortion(out: Mapping[str, Any], features: Mapping[str, jax.Array], pixels: Any,
                    lmbda: float, scale_weights: Mapping[str, float],
                    task_fn: Callable[[Mapping[str, jax.Array]], jax.Array] | None = None,
                    task_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns (loss, metrics) for one batch; `out` is a codec's __call__ output."""
  bpp, per_stream = rate_bpp(out["bits"], pixels)
  mse = feature_mse(features, out["features_hat"])
  dist = sum(scale_weights.get(s, 1.0) * m for s, m in mse.items())
  metrics = {"bpp": bpp, "mse": dist}
  if out.get("distortion_weights"):
    dist = weighted_distortion(features, out["features_hat"], out["distortion_weights"],
                               scale_weights)
    metrics["mse_weighted"] = dist
    metrics.update({f"distortion_weight/{s}": jnp.mean(v)
                    for s, v in out["distortion_weights"].items()})
  loss = bpp + lmbda * dist
  metrics["loss"] = loss
  metrics.update({f"bpp/{k}": v for k, v in per_stream.items()})
  metrics.update({f"mse/{s}": v for s, v in mse.items()})
  if task_fn is not None and task_weight > 0:
    ref = jax.lax.stop_gradient(task_fn(features))
    task = jnp.mean(jnp.square(task_fn(out["features_hat"]) - ref))
    loss = loss + task_weight * task
    metrics["task"] = task
    metrics["loss"] = loss
  return loss, metrics
