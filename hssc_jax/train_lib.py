"""Training of learned feature codecs: `train_and_evaluate(config, workdir)`.

```
images (tf.data, random crops/flips/scale jitter) --frozen detector part 1 (jit)--> features
   (or features from the disk cache) --codec (jit, data-parallel)--> bits, features_hat
loss = bpp + lambda * weighted feature MSE (+ task distillation through the detector head)
```

Data parallel over every device with `jax.jit` and `NamedSharding` (batch split over a "data"
mesh axis, parameters replicated); multi-host ready (`jax.distributed.initialize()` when
`config.distributed`, each process reading its own shard of the data). Orbax checkpoints every
`checkpoint_every` steps, keeping `keep_checkpoints`; a restarted run resumes from the latest one.
The final step also writes the codec's CDF tables (`tables/<step>.npz`).
"""

import functools
import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hssc_jax import errors
from hssc_jax.codecs import registry
from hssc_jax.detectors import factory
from hssc_jax.training import checkpoints
from hssc_jax.training import feature_cache
from hssc_jax.training import loss as loss_lib
from hssc_jax.training import summary


def make_optimizer(cfg: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """Adam with warmup + cosine (or constant) schedule and global-norm clipping."""
  warmup = max(min(int(cfg.warmup_steps), steps - 1), 1)
  if cfg.schedule == "cosine":  # decay_steps counts the warmup and must exceed it
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(steps, warmup + 1),
                                            cfg.lr * cfg.final_lr_fraction)
  elif cfg.schedule == "constant":
    lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup),
                               optax.constant_schedule(cfg.lr)], [warmup])
  else:
    raise errors.ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                     optax.adam(lr, b1=cfg.b1, b2=cfg.b2))


def _identity(config: ml_collections.ConfigDict, scales, channels) -> dict[str, Any]:
  return {"codec": config.codec.name, "codec_kwargs": config.codec.kwargs.to_dict(),
          "scales": list(scales), "channels": list(channels),
          "detector": factory.identity(config.detector)}


def build_codec_for(config: ml_collections.ConfigDict, detector) -> Any:
  channels = factory.feature_channels(detector)
  return registry.build_codec(config.codec.name, config.codec.kwargs, detector.feature_names,
                              channels)


def make_train_step(codec, tx: optax.GradientTransformation, rng: jax.Array, lmbda: float,
                    scale_weights: Mapping[str, float], part1=None, task_fn=None,
                    task_weight: float = 0.0):
  """The pure step `(state, batch) -> (state, metrics)`; state = {step, params, opt_state}.

  `batch` holds "pixels" and either "image" (then the frozen `part1` computes the features) or
  "features". Noise for quantization comes from fold_in(rng, step).
  """

  def train_step(state, batch):
    if "features" in batch:
      feats = batch["features"]
    else:
      feats = jax.lax.stop_gradient(part1(batch["image"]))
    step_rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      out = codec.apply({"params": params}, feats, True, rngs={"noise": step_rng})
      return loss_lib.rate_distortion(out, feats, batch["pixels"], lmbda, scale_weights, task_fn,
                                      task_weight)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return train_step


def _check_config(config: ml_collections.ConfigDict) -> None:
  n = jax.device_count() // jax.process_count()
  if config.data.batch_size % max(n, 1):
    raise errors.ConfigError(
        f"data.batch_size={config.data.batch_size} (per process) must be a multiple of the "
        f"{n} local devices")
  for key in ("steps", "checkpoint_every", "keep_checkpoints", "log_every"):
    if int(config[key]) < 1:
      raise errors.ConfigError(f"{key} must be >= 1, got {config[key]}")
  if config.loss.lmbda <= 0:
    raise errors.ConfigError(f"loss.lmbda must be > 0, got {config.loss.lmbda}")


def _image_batches(config, detector, det_vars, mesh) -> tuple[Iterator[dict], str]:
  """Per-process batches of {"features" | "image", "pixels"} from the configured source."""
  from hssc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  sources = [dict(s) for s in d.sources]
  if d.synthetic_images > 0:
    from hssc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    root = Path(config.workdir_hint) / "shapes_data"
    if not (root / "annotations" / "instances_train.json").exists():
      synthetic.make_shapes_dataset(root, split="train", num_images=d.synthetic_images,
                                    image_size=d.synthetic_size, vary_size=True, seed=d.seed)
    sources = [{"root": str(root), "split": "train"}]
  if not sources:
    raise errors.ConfigError("data.sources is empty: give at least one (root, split)")
  kw = dict(size=d.size, batch_size=d.batch_size, scale_range=tuple(d.scale_range),
            hflip=d.hflip, data_dir=d.data_dir or None)
  iters = [pipeline.train_batches(src["root"], src["split"], seed=d.seed + i, **kw)
           for i, src in enumerate(sources)]

  def images():
    i = 0
    while True:
      b = next(iters[i % len(iters)])
      i += 1
      yield {"image": b["image"],
             "pixels": np.full((b["image"].shape[0],), float(d.size * d.size), np.float32)}

  if not d.cache_features:
    return images(), "image"
  part1 = jax.jit(lambda x: detector.part1(det_vars, x))
  counts = [factory.count_images(src["root"], src["split"], d.data_dir or None)
            for src in sources]
  num_batches = max(1, d.cache_variants * sum(counts) // d.batch_size)
  key = feature_cache.cache_key(detector=factory.identity(config.detector), sources=sources,
                                size=d.size, scale_range=list(d.scale_range), hflip=d.hflip,
                                variants=d.cache_variants, seed=d.seed, batch=d.batch_size)
  folder = Path(d.cache_dir or Path(config.get("workdir_hint", ".")) / "feature_cache") / key
  cache = feature_cache.build(folder, images(), num_batches,
                              lambda x: part1(x), detector.feature_names, d.size,
                              meta={"detector": factory.identity(config.detector)})
  cache.seed = d.seed

  def cached():
    step = 0
    while True:
      yield cache.batch(step, d.batch_size, jax.process_index(), jax.process_count())
      step += 1

  return cached(), "features"


def _global(batch: Mapping[str, Any], sharding: NamedSharding) -> Any:
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the configured codec in `workdir` (resuming if it holds a run); returns last metrics."""
  if config.get("distributed", False):
    jax.distributed.initialize()
  _check_config(config)
  workdir = Path(workdir)
  detector, det_vars = factory.build(config.detector)
  codec = build_codec_for(config, detector)
  checkpoints.check_run(workdir, _identity(config, detector.feature_names,
                                           factory.feature_channels(detector)))
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))

  with config.unlocked():
    config.workdir_hint = str(workdir)
  batches, kind = _image_batches(config, detector, det_vars, mesh)
  first = next(batches)

  steps = int(config.steps)
  tx = make_optimizer(config.optim, steps)
  rng = jax.random.PRNGKey(config.seed)
  feats0 = (first["features"] if kind == "features"
            else jax.jit(lambda x: detector.part1(det_vars, x))(first["image"]))
  params = jax.jit(lambda k, f: codec.init({"params": k, "noise": k}, f, True)["params"])(
      rng, feats0)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  state = jax.device_put(state, replicated)

  ckpt = checkpoints.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  restored = ckpt.restore(state)
  if restored is not None:
    state = restored
  start = int(state["step"])
  if jax.process_index() == 0:
    print(summary.parameter_overview(state["params"]))
    print(f"training {config.codec.name} in {workdir} from step {start} to {steps} on "
          f"{jax.device_count()} device(s), batch {config.data.batch_size * jax.process_count()}")

  task_fn = None
  if config.loss.task_weight > 0:
    task_fn = lambda f: factory.task_outputs(detector, det_vars, f)
  part1 = None if kind == "features" else (lambda x: detector.part1(det_vars, x))
  train_step = make_train_step(codec, tx, rng, config.loss.lmbda, dict(config.loss.scale_weights),
                               part1=part1, task_fn=task_fn, task_weight=config.loss.task_weight)
  step_fn = jax.jit(train_step, donate_argnums=(0,), out_shardings=(replicated, replicated))
  writer = summary.Writer(workdir, enabled=jax.process_index() == 0)
  metrics_host: dict[str, float] = {}
  pending = first
  bar = tqdm.tqdm(total=steps, initial=start, desc=config.codec.name, unit="step",
                  disable=jax.process_index() != 0 or not config.get("progress", True))
  t_last, n_last = time.time(), start
  try:
    for step in range(start, steps):
      batch = pending if pending is not None else next(batches)
      pending = None
      state, metrics = step_fn(state, _global(batch, data_sharding))
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise errors.TrainingError(
            f"loss is {loss} at step {step + 1}: training diverged; nothing was saved for this "
            f"step (latest good checkpoint: step {ckpt.latest_step()}). Lower optim.lr or "
            "check the data")
      done = step + 1
      if done % config.log_every == 0 or done == steps:
        metrics_host = {k: float(v) for k, v in metrics.items()}
        now = time.time()
        metrics_host["steps_per_s"] = (done - n_last) / max(now - t_last, 1e-9)
        t_last, n_last = now, done
        writer.scalars(done, metrics_host)
        bar.set_postfix(bpp=f"{metrics_host['bpp']:.4f}", mse=f"{metrics_host['mse']:.4g}",
                        sps=f"{metrics_host['steps_per_s']:.2f}")
        if bar.disable and jax.process_index() == 0:  # No bar (e.g. a log file): one line.
          print(f"step {done}/{steps}: loss {metrics_host['loss']:.4f} bpp "
                f"{metrics_host['bpp']:.4f} mse {metrics_host['mse']:.4g} "
                f"{metrics_host['steps_per_s']:.2f} steps/s", flush=True)
      bar.update(1)
      ckpt.maybe_save(done, state, force=done == steps)
  finally:
    bar.close()
    writer.close()
  if steps > start or not (workdir / "tables" / f"{steps}.npz").exists():
    ckpt.maybe_save(steps, state, force=True)
    tables = codec.build_tables(jax.device_get(state["params"]))
    ckpt.save_tables(steps, tables)
  ckpt.close()
  if jax.process_index() == 0:
    (workdir / "final_metrics.json").write_text(json.dumps(metrics_host, indent=2))
  return metrics_host


def load_codec(workdir: str | Path, step: int | None = None) -> tuple[Any, Any, Any, dict]:
  """(codec, params, tables, run identity) of a trained workdir (tables rebuilt if missing)."""
  run = checkpoints.read_run(workdir)
  codec = registry.build_codec(run["codec"], run["codec_kwargs"], run["scales"], run["channels"])
  dummy = {s: jnp.zeros((1, 64 >> i, 64 >> i, c), jnp.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(lambda: codec.init({"params": key, "noise": key}, dummy, True)["params"])
  params, step = checkpoints.restore_params(workdir, abstract, step)
  path = Path(workdir) / "tables" / f"{step}.npz"
  tables = checkpoints.load_tables(path) if path.exists() else codec.build_tables(params)
  return codec, params, tables, run
