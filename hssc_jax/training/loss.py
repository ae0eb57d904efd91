"""The rate-distortion objective, computed outside the codec module (CompressAI habit).

  L = R + lambda * (D + task_weight * T)
  R = mean over images of sum over streams of bits / (H x W of the input image)   [bpp]
  D = sum_s w_s * mean((f_s - f_hat_s)^2)        [feature MSE, of normalized features when the
                                                  codec has `feature_norm`]
      or, when the codec supplies per-image weights out["distortion_weights"] = {s: (N,)} (e.g.
      MFIBA's importance), D = mean_n sum_s w_s * v_s[n] * mse_s[n] with mse_s[n] per image
  T = sum_a w_a mean_k (p_ak - p_hat_ak)^2 / sum_a w_a        [task distillation, `task_distortion`]
      p = sigmoid(head(f)), p_hat = sigmoid(head(f_hat)) over every anchor row a (box, objectness,
      class probabilities), w_a = max(obj_a, obj_hat_a) + floor (stop-gradient): rows where the
      uncompressed or the decoded detector sees an object dominate, background rows keep a floor.

The task term is the "task-aware" loss (Liu et al. 2025 and Zhang et al. 2025 both train with one).
A plain MSE of raw head logits would be a fixed linear re-weighting of the feature error dominated by
background cells; the sigmoid and the object weighting make it measure what detection loses.
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


TASK_WEIGHT_FLOOR = 0.01


def task_distortion(logits: jax.Array, logits_hat: jax.Array, mask: Any = None) -> jax.Array:
  """Object-weighted MSE of the sigmoid head outputs (N, A, 5 + C) (see the module doc, T);
  `mask` (N, A), if given, keeps only those outputs (e.g. the detections one scale feeds)."""
  p, q = jax.nn.sigmoid(logits), jax.nn.sigmoid(logits_hat)
  w = jax.lax.stop_gradient(jnp.maximum(p[..., 4], q[..., 4])) + TASK_WEIGHT_FLOOR
  if mask is not None:
    w = w * mask
  err = jnp.mean(jnp.square(p - q), axis=-1)
  return jnp.sum(w * err) / jnp.sum(w)


def rate_distortion(out: Mapping[str, Any], features: Mapping[str, jax.Array], pixels: Any,
                    lmbda: Any, scale_weights: Mapping[str, float],
                    task_fn: Callable[[Mapping[str, jax.Array]], jax.Array] | None = None,
                    task_weight: float = 0.0, denormalize: Callable | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns (loss, metrics) for one batch; `out` is a codec's __call__ output.

  `task_fn` maps a pyramid to head logits; `denormalize` (the codec's) maps the codec's feature
  domain back to the detector's before the head sees it.
  """
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
  if task_fn is not None and task_weight > 0:
    denorm = denormalize or (lambda f: f)
    ref = jax.lax.stop_gradient(task_fn(denorm(features)))
    task = task_distortion(ref, task_fn(denorm(out["features_hat"])))
    dist = dist + task_weight * task
    metrics["task"] = task
  loss = bpp + lmbda * dist
  metrics["loss"] = loss
  metrics.update({f"bpp/{k}": v for k, v in per_stream.items()})
  metrics.update({f"mse/{s}": v for s, v in mse.items()})
  return loss, metrics
