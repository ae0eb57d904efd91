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
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hssc_jax import errors
from hssc_jax import zoo
from hssc_jax.codecs import registry
from hssc_jax.detectors import factory
from hssc_jax.training import checkpoints
from hssc_jax.training import feature_cache
from hssc_jax.training import loss as loss_lib
from hssc_jax.training import summary
from hssc_jax.training import widen as widen_lib

# Importable with JAX, flax, optax and orbax alone (scripts/gpu_sweep.py on an accelerator): configs
# are read by attribute, tf.data and tqdm are imported where used.


def learning_rate_schedule(cfg: Any, steps: int) -> optax.Schedule:
  """`config.optim`'s learning rate over a run of `steps` steps: linear warmup, then cosine decay
  to `final_lr_fraction` (or constant)."""
  warmup = max(min(int(cfg.warmup_steps), steps - 1), 1)
  if cfg.schedule == "cosine":  # decay_steps counts the warmup and must exceed it
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(steps, warmup + 1),
                                              cfg.lr * cfg.final_lr_fraction)
  if cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup),
                                 optax.constant_schedule(cfg.lr)], [warmup])
  raise errors.ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")


def path_matcher(pattern: str, option: str) -> Callable[[Sequence[str]], bool]:
  """Whether a regular expression (the config `option`'s value) matches somewhere in a parameter
  path (("models_p3", "gain") is matched as "models_p3/gain"); a ConfigError when it is not one."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise errors.ConfigError(f"{option} is not a regular expression: {pattern!r} ({e})") from e
  return lambda path: regex.search("/".join(path)) is not None


def trainable_labels(params: Any, pattern: str) -> Any:
  """{"train", "frozen"} per parameter array: "train" where `pattern` (a regular expression)
  matches somewhere in its path ("models_p3/gain"), everything when `pattern` is empty."""
  matches = path_matcher(pattern, "optim.trainable")
  return flax.traverse_util.path_aware_map(
      lambda path, _: "train" if matches(path) else "frozen", params)


def check_trainable(params: Any, pattern: str) -> tuple[int, int]:
  """(trainable, total) parameter arrays under `optim.trainable`; a ConfigError when the pattern
  matches none of them."""
  labels = jax.tree_util.tree_leaves(trainable_labels(params, pattern))
  n = sum(label == "train" for label in labels)
  if not n:
    names = ["/".join(k) for k in flax.traverse_util.flatten_dict(flax.core.unfreeze(params))]
    raise errors.ConfigError(f"optim.trainable {pattern!r} matches no parameter of this codec "
                             f"(names look like {names[:3]})")
  return n, len(labels)


def make_optimizer(cfg: Any, steps: int) -> optax.GradientTransformation:
  """Adam with `learning_rate_schedule` and global-norm clipping; with `cfg.trainable` (a regular
  expression over parameter paths) the other parameters stay as they are (e.g. "gain" trains the
  quality ladder's gain vectors alone, at a learning rate the shared weights would not take)."""
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                   optax.adam(learning_rate_schedule(cfg, steps), b1=cfg.b1, b2=cfg.b2))
  pattern = str(getattr(cfg, "trainable", "") or "")
  if not pattern:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, pattern))


def codec_kwargs(config: Any, feature_norm: Any = None,
                 warm_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The codec's keyword arguments: the config's, plus the fitted normalization and the number of
  qualities of a variable-rate run (one per lambda of `loss.lmbdas`). A warm start from a model
  whose z priors were fitted per quality (`zoo.fit_z_priors`, `warm_kwargs` its codec kwargs)
  keeps them: each quality's prior of z trains on, instead of a shared one of another shape."""
  kwargs = config.codec.kwargs.to_dict()
  lmbdas = lambdas_of(config)
  if len(lmbdas) > 1:
    kwargs["qualities"] = len(lmbdas)
  if feature_norm is not None:
    kwargs["feature_norm"] = feature_norm
  if (warm_kwargs or {}).get("z_priors") and "z_priors" not in kwargs:
    kwargs["z_priors"] = True
  return kwargs


def lambdas_of(config: Any) -> tuple[float, ...]:
  """`loss.lmbdas` (variable rate: quality q trains with lmbdas[q]) or the single `loss.lmbda`."""
  lmbdas = tuple(float(v) for v in (config.loss.get("lmbdas") or ()))
  return lmbdas or (float(config.loss.lmbda),)


def quality_weights_of(config: Any) -> tuple[float, ...]:
  """`loss.quality_weights`: relative draw weight per quality of a variable-rate run; () = uniform."""
  return tuple(float(v) for v in (config.loss.get("quality_weights") or ()))


def _identity(config: Any, kwargs, scales, channels, detector_identity
              ) -> dict[str, Any]:
  ident = {"codec": config.codec.name, "codec_kwargs": kwargs, "scales": list(scales),
           "channels": list(channels), "detector": detector_identity,
           "lmbdas": list(lambdas_of(config))}
  if config.get("init_from", ""):
    ident["init_from"] = str(config.init_from)
  return ident


def build_codec_for(config: Any, detector, feature_norm: Any = None) -> Any:
  channels = factory.feature_channels(detector)
  return registry.build_codec(config.codec.name, codec_kwargs(config, feature_norm),
                              detector.feature_names, channels)


def fit_feature_norm(batches: Iterator[Mapping[str, Any]], num_batches: int,
                     scales: Sequence[str]) -> tuple:
  """Per-channel mean and std of each scale over `num_batches` feature batches, as the codec field
  `feature_norm` ((scale, means, stds), ...); stds are floored at 1e-3 (dead channels)."""
  acc = {s: [0.0, 0.0, 0.0] for s in scales}
  for _ in range(num_batches):
    feats = next(batches)
    for s in scales:
      x = np.asarray(feats[s], np.float64).reshape(-1, np.shape(feats[s])[-1])
      acc[s][0] += x.shape[0]
      acc[s][1] = acc[s][1] + x.sum(0)
      acc[s][2] = acc[s][2] + np.square(x).sum(0)
  out = []
  for s in scales:
    n, s1, s2 = acc[s]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    out.append((s, tuple(float(np.float32(v)) for v in mean),
                tuple(float(np.float32(max(v, 1e-3))) for v in std)))
  return tuple(out)


def quality_log_probs(weights: Any, qualities: int) -> jax.Array | None:
  """Log-probabilities of drawing each quality from relative `weights`; None (uniform) when empty.
  Bad weights raise `ConfigError` (a ValueError)."""
  if weights is None or len(weights) == 0:
    return None
  w = np.asarray(weights, np.float64)
  if not qualities or w.shape != (qualities,):
    raise errors.ConfigError(
        f"loss.quality_weights needs one weight per quality ({qualities}), got {len(w)}")
  if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise errors.ConfigError(
        f"loss.quality_weights must be finite, non-negative and not all zero: {list(w)}")
  with np.errstate(divide="ignore"):
    return jnp.asarray(np.log(w / w.sum()), jnp.float32)


def make_train_step(codec, tx: optax.GradientTransformation, rng: jax.Array, lmbdas: Any,
                    scale_weights: Mapping[str, float], part1=None, task_fn=None,
                    task_weight: float = 0.0, quality_weights: Any = None):
  """The pure step `(state, batch) -> (state, metrics)`; state = {step, params, opt_state}.

  `batch` holds "pixels" and either "image" (then the frozen `part1` computes the features) or
  "features" (in the detector's domain; the codec's `normalize` is applied here). `lmbdas` is a
  float or, for a variable-rate codec, one lambda per quality: each step draws its quality q
  (uniformly, or in proportion to `quality_weights`, one non-negative weight per quality) and trains
  with lmbdas[q] (lambda sampled per batch). Noise for quantization comes from fold_in(rng, step).
  """
  lmbdas = jnp.atleast_1d(jnp.asarray(lmbdas, jnp.float32))
  log_p = quality_log_probs(quality_weights, codec.qualities)

  def train_step(state, batch):
    if "features" in batch:
      feats = batch["features"]
    else:
      feats = jax.lax.stop_gradient(part1(batch["image"]))
    feats = codec.normalize(feats)
    q_rng, step_rng = jax.random.split(jax.random.fold_in(rng, state["step"]))
    if codec.qualities:
      if log_p is None:
        q = jax.random.randint(q_rng, (), 0, codec.qualities)
      else:
        q = jax.random.categorical(q_rng, log_p).astype(jnp.int32)
      model = codec.clone(quality=q)
    else:
      q, model = jnp.zeros((), jnp.int32), codec

    def loss_fn(params):
      out = model.apply({"params": params}, feats, True, rngs={"noise": step_rng})
      return loss_lib.rate_distortion(out, feats, batch["pixels"], lmbdas[q], scale_weights,
                                      task_fn, task_weight, denormalize=codec.denormalize)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["quality"] = q
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return train_step


def make_eval_step(codec, part1=None):
  """`(params, batch, quality) -> metrics` of the test-time (rounded) forward: the rate the
  bitstream will have (estimated from the entropy models, without the container) next to the
  noisy training proxy, and the feature MSE after rounding."""

  def eval_step(params, batch, q):
    feats = batch["features"] if "features" in batch else part1(batch["image"])
    feats = codec.normalize(feats)
    model = codec.clone(quality=q) if codec.qualities else codec
    out = model.apply({"params": params}, feats, False)
    bpp, _ = loss_lib.rate_bpp(out["bits"], batch["pixels"])
    mse = loss_lib.feature_mse(feats, out["features_hat"])
    return {"bpp_round": bpp, "mse_round": sum(mse.values())}

  return eval_step


def _check_config(config: Any) -> None:
  n = jax.device_count() // jax.process_count()
  if config.data.batch_size % max(n, 1):
    raise errors.ConfigError(
        f"data.batch_size={config.data.batch_size} (per process) must be a multiple of the "
        f"{n} local devices")
  for key in ("steps", "checkpoint_every", "keep_checkpoints", "log_every"):
    if int(config[key]) < 1:
      raise errors.ConfigError(f"{key} must be >= 1, got {config[key]}")
  if any(lm <= 0 for lm in lambdas_of(config)):
    raise errors.ConfigError(f"loss lambdas must be > 0, got {lambdas_of(config)}")
  mixed = float(config.loss.get("mixed_fraction", 0.0))
  if not 0.0 <= mixed < 1.0:
    raise errors.ConfigError(f"loss.mixed_fraction must be in [0, 1), got {mixed}")
  qualities = len(lambdas_of(config))
  quality_log_probs(quality_weights_of(config), qualities if qualities > 1 else 0)


def _image_batches(config, detector, det_vars, workdir: Path, detector_identity
                   ) -> tuple[Callable[[int], Iterator[dict]], str]:
  """`batches(start)`: per-process batches of {"features" | "image", "pixels"} from step `start`
  on. From the feature cache a resumed run sees exactly the batches it would have seen; from
  images (no cache) the stream is replayed up to `start`."""
  from hssc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  sources = [dict(s) for s in d.sources]
  if d.synthetic_images > 0:
    from hssc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    root = workdir / "shapes_data"
    if not (root / "annotations" / "instances_train.json").exists():
      synthetic.make_shapes_dataset(root, split="train", num_images=d.synthetic_images,
                                    image_size=d.synthetic_size, vary_size=True, seed=d.seed)
    sources = [{"root": str(root), "split": "train"}]
  if not sources:
    raise errors.ConfigError("data.sources is empty: give at least one (root, split)")
  letterbox = int(d.get("letterbox", 0))
  crop_features = bool(d.get("crop_features", False))
  if crop_features and not (d.cache_features and letterbox >= d.size):
    raise errors.ConfigError("data.crop_features crops the cached maps of whole letterboxed "
                             "images: it needs data.cache_features and data.letterbox >= data.size")
  image_size = letterbox if crop_features else d.size
  kw = dict(size=image_size, batch_size=d.batch_size, scale_range=tuple(d.scale_range),
            hflip=d.hflip, data_dir=d.data_dir or None, letterbox=letterbox)

  def images():
    iters = [pipeline.train_batches(src["root"], src["split"], seed=d.seed + i, **kw)
             for i, src in enumerate(sources)]
    i = 0
    while True:
      b = next(iters[i % len(iters)])
      i += 1
      yield {"image": b["image"],
             "pixels": np.full((b["image"].shape[0],), float(image_size**2), np.float32)}

  if not d.cache_features:
    def from_images(start: int):
      it = images()
      for _ in range(start):
        next(it)
      return it
    return from_images, "image"
  part1 = jax.jit(lambda x: detector.part1(det_vars, x))
  counts = [factory.count_images(src["root"], src["split"], d.data_dir or None)
            for src in sources]
  num_batches = max(1, d.cache_variants * sum(counts) // d.batch_size)
  key_parts = dict(detector=detector_identity, sources=sources, size=d.size,
                   scale_range=list(d.scale_range), hflip=d.hflip, variants=d.cache_variants,
                   seed=d.seed, batch=d.batch_size)
  if letterbox:
    key_parts["letterbox"] = letterbox
  if crop_features:
    key_parts.update(size=image_size, crop_features=True)
  key = feature_cache.cache_key(**key_parts)
  folder = Path(d.cache_dir or workdir / "feature_cache") / key
  cache = feature_cache.build(folder, images(), num_batches, part1, detector.feature_names,
                              image_size, meta={"detector": detector_identity}, seed=d.seed,
                              crop=d.size if crop_features else 0)

  def cached(start: int):
    step = start
    while True:
      yield cache.batch(step, d.batch_size, jax.process_index(), jax.process_count())
      step += 1

  return cached, "features"


def _feature_reader(kind: str, detector, det_vars) -> tuple[Callable | None, Callable]:
  """(part 1 or None, batch -> feature pyramid) for batches of `kind` (`_image_batches`): the
  cached features, or the jitted part 1 of the detector on the batch's images."""
  if kind == "features":
    return None, lambda b: b["features"]
  part1 = jax.jit(lambda x: detector.part1(det_vars, x))
  return part1, lambda b: part1(b["image"])


def feature_stream(config: Any, workdir: str | Path) -> Iterator[dict[str, np.ndarray]]:
  """The raw (unnormalized) feature pyramids a run of `config` trains on, from its first batch
  (the feature cache is built in `data.cache_dir`, else under `workdir`, when it is missing)."""
  detector, det_vars = factory.build(config.detector)
  batches_from, kind = _image_batches(config, detector, det_vars, Path(workdir),
                                      factory.identity(config.detector))
  _, as_features = _feature_reader(kind, detector, det_vars)
  for b in batches_from(0):
    yield jax.device_get(as_features(b))


def _global(batch: Mapping[str, Any], sharding: NamedSharding) -> Any:
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


ZOO_PREFIX = "zoo:"  # init_from="zoo:<name>": warm start from a shipped zoo model


def read_warm_start(init_from: str) -> tuple[dict[str, Any], Any] | None:
  """(header with the source's "codec_kwargs", float32 parameters) of a warm start: a zoo model
  ("zoo:base"), a zoo file anywhere (".../hssc.hsz", e.g. one `zoo.respace` wrote) or a training
  workdir (its latest parameters, any codec); None when empty.

  Several sources joined by "+" ("zoo:hssc+zoo:hssc_paper") are merged in order, a later source's
  arrays replacing an earlier one's at the same path; the header is the last source's.
  """
  if not init_from:
    return None
  if "+" in init_from:
    parts = [_read_one_warm_start(s) for s in init_from.split("+") if s]
    if not parts:
      raise errors.ConfigError(f"init_from {init_from!r} names no source")
    merged: dict[tuple[str, ...], Any] = {}
    for _, params in parts:
      merged.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(params)))
    return parts[-1][0], flax.traverse_util.unflatten_dict(merged)
  return _read_one_warm_start(init_from)


def _read_one_warm_start(init_from: str) -> tuple[dict[str, Any], Any]:
  if init_from.endswith(zoo.SUFFIX):
    return zoo.read(init_from)
  if not init_from.startswith(ZOO_PREFIX):
    _, params, _, run = load_codec(init_from)
    return {"codec_kwargs": run["codec_kwargs"]}, jax.device_get(params)
  name = init_from[len(ZOO_PREFIX):]
  if name not in zoo.names():
    raise errors.ConfigError(f"init_from {init_from!r}: no zoo model {name!r}; the zoo has "
                             f"{zoo.names()}")
  return zoo.read(zoo.path_of(name))


def overlay_params(params: Any, source: Any, skip_mismatched: bool = False, widen: bool = False,
                   exclude: str = "") -> tuple[Any, int, int]:
  """`params` with every array that `source` holds at the same path and shape replaced by it
  (e.g. MFIBA started from the base codec, whose per-scale models it shares). Returns (params,
  arrays copied, arrays in all); ConfigError when nothing matches or, unless `skip_mismatched`
  (an ablation started from the full model) or `widen`, a shared path differs in shape. With
  `widen`, a narrower source array is copied into the leading block of the wider one so the wider
  codec starts computing what the source did (`training.widen`). Source arrays whose path
  ("models_p4/condition/heads/kernel") matches the regular expression `exclude` are not copied
  (e.g. "condition" for a codec whose conditioning differs from the source's); ConfigError when it
  is not a regular expression or matches none of them.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  src = flax.traverse_util.flatten_dict(flax.core.unfreeze(source))
  if exclude:
    matches = path_matcher(exclude, "init_exclude")
    kept = {k: v for k, v in src.items() if not matches(k)}
    if len(kept) == len(src):
      raise errors.ConfigError(f"init_exclude {exclude!r} matches no parameter of the warm start")
    src = kept
  clash = [k for k in flat if k in src and np.shape(src[k]) != np.shape(flat[k])]
  widened, clash = (clash, []) if widen else ([], clash)
  for k in widened:
    flat[k] = jnp.asarray(widen_lib.widen_array("/".join(k), src[k], flat[k]), flat[k].dtype)
  if clash and not skip_mismatched:
    raise errors.ConfigError(
        "warm start: parameters of the same name differ in shape, e.g. "
        f"{'/'.join(clash[0])} {np.shape(src[clash[0]])} vs {np.shape(flat[clash[0]])}")
  copied = [k for k in flat if k in src and k not in clash and k not in widened]
  if not copied and not widened:
    raise errors.ConfigError("warm start: the source shares no parameter with this codec")
  for k in copied:
    flat[k] = jnp.asarray(src[k], flat[k].dtype)
  return flax.traverse_util.unflatten_dict(flat), len(copied) + len(widened), len(flat)


CONSTANTS_FILE = "constants.json"  # codec fields fitted after training (e.g. MFIBA's allocation)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains the configured codec in `workdir` (resuming if it holds a run); returns last metrics."""
  if config.get("distributed", False):
    jax.distributed.initialize()
  _check_config(config)
  workdir = Path(workdir)
  detector, det_vars = factory.build(config.detector)
  detector_identity = factory.identity(config.detector)
  channels = factory.feature_channels(detector)
  batches_from, kind = _image_batches(config, detector, det_vars, workdir, detector_identity)
  part1, as_features = _feature_reader(kind, detector, det_vars)

  stream = batches_from(0)
  first = as_features(next(stream))  # initialises the parameters (and starts the fit)
  feature_norm = None
  warm = read_warm_start(str(config.get("init_from", "")))
  if warm is not None and config.codec.get("normalize", False):
    feature_norm = warm[0].get("codec_kwargs", {}).get("feature_norm")  # the source's constants
  if feature_norm is None and config.codec.get("normalize", False):
    fit_batches = itertools.chain([first], (as_features(b) for b in stream))
    feature_norm = fit_feature_norm(fit_batches, int(config.codec.get("normalize_batches", 32)),
                                    detector.feature_names)
  del stream
  kwargs = codec_kwargs(config, feature_norm, warm[0].get("codec_kwargs") if warm else None)
  codec = registry.build_codec(config.codec.name, kwargs, detector.feature_names, channels)
  checkpoints.check_run(workdir, _identity(config, kwargs, detector.feature_names, channels,
                                           detector_identity))
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))

  steps = int(config.steps)
  tx = make_optimizer(config.optim, steps)
  rng = jax.random.PRNGKey(config.seed)
  feats0 = codec.normalize(first)
  params = jax.jit(lambda k, f: codec.init({"params": k, "noise": k}, f, True)["params"])(
      rng, feats0)
  trainable = str(config.optim.get("trainable", "") or "")
  if trainable:
    n, total = check_trainable(params, trainable)
    print(f"training {n} of {total} parameter arrays (optim.trainable={trainable!r})")
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  state = jax.device_put(state, replicated)

  ckpt = checkpoints.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  restored = ckpt.restore(state)
  if restored is not None:
    state = restored
  elif config.get("init_from", ""):
    # Warm start (e.g. a new lambda sweep): the parameters of another run, a fresh optimizer.
    widen = bool(config.get("init_widen", False))
    init, copied, total = overlay_params(state["params"], warm[1],
                                         bool(config.get("init_skip_mismatched", False)), widen,
                                         str(config.get("init_exclude", "") or ""))
    if widen:
      source = registry.build_codec(config.codec.name, warm[0]["codec_kwargs"],
                                    detector.feature_names, channels)
      widen_lib.check_preserved(source, warm[1], codec, init, feats0)
    print(f"initialised {copied} of {total} parameter arrays from {config.init_from}")
    state = jax.device_put({"step": state["step"], "params": init, "opt_state": tx.init(init)},
                           replicated)
  start = int(state["step"])
  batches = batches_from(start)
  if jax.process_index() == 0:
    print(summary.parameter_overview(state["params"]))
    print(f"training {config.codec.name} in {workdir} from step {start} to {steps} on "
          f"{jax.device_count()} device(s), batch {config.data.batch_size * jax.process_count()}")

  task_weight = float(config.loss.task_weight)
  task_fn = None
  if task_weight > 0:
    task_fn = lambda f: factory.task_outputs(detector, det_vars, f)
  lmbdas = lambdas_of(config)
  quality_weights = quality_weights_of(config)
  sw = dict(config.loss.scale_weights)
  # Noise training, then a straight-through ("mixed") fine-tune: the decoder sees rounded latents.
  mixed_from = steps - int(round(float(config.loss.get("mixed_fraction", 0.0)) * steps))
  step_fns = {}

  def step_fn_for(step: int):
    phase = "mixed" if step >= mixed_from else "main"
    if phase not in step_fns:
      c = codec.clone(train_quantization="mixed") if phase == "mixed" else codec
      fn = make_train_step(c, tx, rng, lmbdas, sw, part1=part1, task_fn=task_fn,
                           task_weight=task_weight, quality_weights=quality_weights)
      step_fns[phase] = jax.jit(fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
    return step_fns[phase]

  eval_fn = jax.jit(make_eval_step(codec, part1))
  writer = summary.Writer(workdir, enabled=jax.process_index() == 0)
  metrics_host: dict[str, float] = {}
  import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=steps, initial=start, desc=config.codec.name, unit="step",
                  disable=jax.process_index() != 0 or not config.get("progress", True))
  t_last, n_last = time.time(), start
  try:
    for step in range(start, steps):
      batch = _global(next(batches), data_sharding)
      state, metrics = step_fn_for(step)(state, batch)
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise errors.TrainingError(
            f"loss is {loss} at step {step + 1}: training diverged; nothing was saved for this "
            f"step (latest good checkpoint: step {ckpt.latest_step()}). Lower optim.lr or "
            "check the data")
      done = step + 1
      if done % config.log_every == 0 or done == steps:
        metrics_host = {k: float(v) for k, v in metrics.items()}
        metrics_host.update({k: float(v) for k, v in
                             eval_fn(state["params"], batch, metrics["quality"]).items()})
        now = time.time()
        metrics_host["steps_per_s"] = (done - n_last) / max(now - t_last, 1e-9)
        t_last, n_last = now, done
        writer.scalars(done, metrics_host)
        bar.set_postfix(bpp=f"{metrics_host['bpp']:.4f}", mse=f"{metrics_host['mse']:.4g}",
                        sps=f"{metrics_host['steps_per_s']:.2f}")
        if bar.disable and jax.process_index() == 0:  # No bar (e.g. a log file): one line.
          task = f" task {metrics_host['task']:.4g}" if "task" in metrics_host else ""
          print(f"step {done}/{steps} q{int(metrics_host['quality'])}: loss "
                f"{metrics_host['loss']:.4f} bpp {metrics_host['bpp']:.4f} (rounded "
                f"{metrics_host['bpp_round']:.4f}) mse {metrics_host['mse']:.4g} (rounded "
                f"{metrics_host['mse_round']:.4g}){task} {metrics_host['steps_per_s']:.2f} steps/s",
                flush=True)
      bar.update(1)
      ckpt.maybe_save(done, state, force=done == steps)
  finally:
    ckpt.wait()  # a save still in flight (e.g. when the loss diverged) completes before we go on
    bar.close()
    writer.close()
  if steps > start or not (workdir / "tables" / f"{steps}.npz").exists():
    ckpt.maybe_save(steps, state, force=True)
    tables = codec.build_tables(jax.device_get(state["params"]))
    ckpt.save_tables(steps, tables)
  ckpt.close()
  hook = getattr(codec, "post_training_constants", None)
  constants_path = workdir / CONSTANTS_FILE
  if hook is not None and task_fn is not None and not constants_path.exists():
    # Fitted on batches the run trained on (the first ones of the stream), never on test data.
    it = batches_from(0)
    fit = [codec.normalize(as_features(next(it)))
           for _ in range(int(config.get("calibrate_batches", 4)))]
    constants = hook(jax.device_get(state["params"]), fit, float(config.data.size) ** 2, task_fn)
    if jax.process_index() == 0:
      constants_path.write_text(json.dumps(constants))
  if jax.process_index() == 0:
    (workdir / "final_metrics.json").write_text(json.dumps(metrics_host, indent=2))
  return metrics_host


def load_codec(workdir: str | Path, step: int | None = None) -> tuple[Any, Any, Any, dict]:
  """(codec, params, tables, run identity) of a trained workdir (tables rebuilt if missing)."""
  run = checkpoints.read_run(workdir)
  constants = Path(workdir) / CONSTANTS_FILE
  if constants.exists():
    run = dict(run, codec_kwargs=dict(run["codec_kwargs"], **json.loads(constants.read_text())))
  codec = registry.build_codec(run["codec"], run["codec_kwargs"], run["scales"], run["channels"])
  dummy = {s: jnp.zeros((1, 64 >> i, 64 >> i, c), jnp.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(lambda: codec.init({"params": key, "noise": key}, dummy, True)["params"])
  params, step = checkpoints.restore_params(workdir, abstract, step)
  path = Path(workdir) / "tables" / f"{step}.npz"
  tables = checkpoints.load_tables(path) if path.exists() else codec.build_tables(params)
  return codec, params, tables, run
