r"""Trains the whole zoo sweep on one accelerator, without TensorFlow, TFDS, ml-collections or tfc.

  python scripts/gpu_sweep.py pack runs/gpu_bundle              # here: images, detector, configs
  python scripts/gpu_sweep.py train runs/gpu_bundle OUT --minutes 7   # on the GPU machine
  python scripts/gpu_sweep.py finish OUT [--install]            # here: join, check, (install)
  python scripts/gpu_sweep.py train runs/gpu_bundle OUT --methods base mfiba \
      --init-from hssc_jax/assets/zoo                           # or fine-tune zoo models there
  python scripts/gpu_sweep.py train runs/gpu_bundle OUT --methods base_per_scale mfiba_per_scale

`pack` (full stack) writes the bundle, under 60 MB: the training images of the recipe
(`configs/common.py` data.sources: coco-mini and coco-tiny train2017), each resized so its long side
is the letterbox side (640) as the tf.data pipeline does at scale 1, stored as YCbCr 4:2:0 planes
of left-neighbour differences under zlib (`pack_image`, decoded with numpy alone); YOLOv5n's
converted variables (msgpack); and each method's resolved training config (JSON).

`train` needs JAX, flax, optax and numpy only. Per step, on the device: a batch of letterbox
canvases is scale-jittered, cropped and flipped by `jax.image.scale_and_translate` (the
augmentation of `data.pipeline._augment`: long side f x 640, f ~ U(scale_range), gray 114 borders,
random crop, horizontal flip), part 1 of YOLOv5n gives the features (with `data.crop_features`,
the recipe's default, of the whole 640 canvas, cut to 320-pixel windows), and the codec takes
the train step of `train_lib.make_train_step` (normalisation, a quality drawn per step, rate +
lambda x (MSE + task distillation), the last `mixed_fraction` of steps straight-through). The budget
(`--minutes`) is split evenly between the methods; each measures its steps/s after compiling and
fits its step count (and so its cosine schedule, driven from the host) to its share. MFIBA starts
from the base codec and the paper-form HSSC from the learned HSSC trained before them, as the zoo
does. The zoo's base and MFIBA are the cross-scale codecs (`configs/base.py:cross`,
`configs/mfiba.py:cross`); `base_per_scale` and `mfiba_per_scale` (their per-scale forms, the
configs' defaults) are packed too but trained only when named (MFIBA's from the sweep's
base_per_scale when that ran first: name them in that order), and so are two arms of the base
codec, `base_coarse` (`configs/base.py:cross,coarse`) and `base_blocks` (`cross,blocks=1`). Each
method is written as a zoo file (`zoo.save`: float16 parameters, fingerprints); a file over 15 MB
is split into parts, so OUT holds at most 8 files, each under 16 MB. Rates are the entropy models'
estimates: no range coding runs there.

Run on one H200 (JAX 0.11.2, flax 0.12.10; before `crop_features`, with part 1 on 320-pixel
crops): each method compiles for 26-69 s and then runs 20-92 steps/s at batch 8, so within 8
minutes the whole sweep runs and writes its files but trains each method for only ~22 steps
(README, "Training on a GPU"); training that counts needs ~30 minutes. On CPU the training path
runs with the host-only packages blocked (tests/test_gpu_sweep.py); its end-to-end test (slow)
passed with windows of whole-canvas features in 6m43s here (4m41s with crops).

`finish` joins the parts, loads every quality of every model (fingerprint checks) and with
`--install` copies them into `hssc_jax/assets/zoo/`. The bundle holds converted AGPL detector
weights: never commit it.
"""

import argparse
import importlib
import json
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.npz"
DETECTOR = "detector.msgpack"
METHODS = ("base", "lmfc", "hssc", "hsc", "mfiba", "hssc_paper")  # warm sources come first
# Config (module, argument) of each method where it is not (name, ""): the zoo's base and MFIBA are
# cross-scale, its L-MFC refines P5 from quality 2 up, its HSSC from 4 up; the per-scale forms and
# the base codec's untried-at-length arms (coded coarse to fine; residual blocks on P4's and P5's
# latent grid; docs/zoo_history.md, stop 47) are candidates, packed but trained only when named
# (VARIANTS).
CONFIGS = {"base": ("base", "cross"), "mfiba": ("mfiba", "cross"),
           "lmfc": ("lmfc", "refine,refine_from=2"), "hssc": ("hssc", "refine,refine_from=4"),
           "base_per_scale": ("base", ""), "mfiba_per_scale": ("mfiba", ""),
           "base_coarse": ("base", "cross,coarse"), "base_blocks": ("base", "cross,blocks=1")}
VARIANTS = tuple(m for m in CONFIGS if m not in METHODS)
WARM_FROM = {"mfiba": "base", "hssc_paper": "hssc", "mfiba_per_scale": "base_per_scale"}
PART_BYTES = 15_000_000  # parts stay under 16 MB
PAD_VALUE = 114.0


class BundleError(ValueError):
  """A bundle or an output folder that is missing, damaged or of another version."""


# ----------------------------------------------------------------------------------------------
# Images: YCbCr 4:2:0, left-neighbour differences, zlib; decodable with numpy alone.

def _rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
  r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
  y = 0.299 * r + 0.587 * g + 0.114 * b
  cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
  cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
  return np.stack([y, cb, cr], -1)


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
  cb, cr = cb - 128.0, cr - 128.0
  rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def pack_image(rgb: np.ndarray) -> bytes:
  """uint8 (H, W, 3) RGB -> bytes: Y at full size and Cb, Cr averaged over 2x2 blocks (edge
  replicated for odd sizes), each row coded as differences to its left neighbour, zlib."""
  h, w, _ = rgb.shape
  ycc = _rgb_to_ycbcr(rgb)
  padded = np.pad(ycc[..., 1:], ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  chroma = padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2, 2).mean((1, 3))
  planes = [ycc[..., 0], chroma[..., 0], chroma[..., 1]]
  out = []
  for p in planes:
    q = np.clip(np.round(p), 0, 255).astype(np.int16)
    out.append(np.diff(q, axis=1, prepend=0).astype(np.uint8).tobytes())
  return zlib.compress(b"".join(out), 9)


def unpack_image(blob: bytes, height: int, width: int) -> np.ndarray:
  """Inverse of `pack_image` (chroma repeated 2x2): uint8 (height, width, 3) RGB."""
  ch, cw = (height + 1) // 2, (width + 1) // 2
  try:
    raw = np.frombuffer(zlib.decompress(blob), np.uint8)
  except zlib.error as e:
    raise BundleError(f"a packed image is damaged ({e})") from e
  if raw.size != height * width + 2 * ch * cw:
    raise BundleError(f"a packed image holds {raw.size} samples, not those of {height}x{width}")
  planes, at = [], 0
  for h, w in ((height, width), (ch, cw), (ch, cw)):
    d = raw[at:at + h * w].reshape(h, w)
    planes.append(np.cumsum(d, axis=1, dtype=np.uint8).astype(np.float64))  # mod 256
    at += h * w
  up = lambda c: np.repeat(np.repeat(c, 2, 0), 2, 1)[:height, :width]
  return _ycbcr_to_rgb(planes[0], up(planes[1]), up(planes[2]))


def letterbox_canvas(rgb: np.ndarray, side: int) -> np.ndarray:
  """The image centred on a side x side canvas of gray 114 (as the evaluation letterbox)."""
  h, w, _ = rgb.shape
  if h > side or w > side:
    raise BundleError(f"an image of {h}x{w} does not fit the {side} letterbox")
  out = np.full((side, side, 3), int(PAD_VALUE), np.uint8)
  top, left = (side - h) // 2, (side - w) // 2
  out[top:top + h, left:left + w] = rgb
  return out


# ----------------------------------------------------------------------------------------------
# pack (full stack)

def _method_config(method: str):
  name, arg = CONFIGS.get(method, (method, ""))
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _source_images(sources: Sequence[Mapping[str, str]], limit: int) -> Iterator[Path]:
  n = 0
  for src in sources:
    ann = Path(src["root"]) / "annotations" / f"instances_{src['split']}.json"
    if not ann.is_file():
      raise BundleError(f"annotation file not found: {ann}")
    for im in sorted(json.loads(ann.read_text())["images"], key=lambda x: x["id"]):
      if limit and n >= limit:
        return
      n += 1
      yield Path(src["root"]) / src["split"] / im["file_name"]


def _resize_long_side(path: Path, side: int) -> np.ndarray:
  """The training pipeline's decode and resize at scale 1 (long side = `side`, antialiased)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from hssc_jax.data import coco_folder  # pylint: disable=g-import-not-at-top
  image = coco_folder.decode_image(tf.constant(path.read_bytes()))
  h, w = int(image.shape[0]), int(image.shape[1])
  scale = side / max(h, w)
  new_hw = [max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)]
  resized = tf.image.resize(image, new_hw, antialias=True)
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def pack(bundle: Path, methods: Sequence[str], limit: int = 0) -> dict[str, Any]:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
  if unknown:
    raise BundleError(f"unknown methods {unknown}; known: {list(METHODS) + list(VARIANTS)}")
  configs = {m: _method_config(m) for m in methods}
  first = configs[methods[0]]
  if first.detector.name != "yolov5":
    raise BundleError(f"the sweep trains for YOLOv5; the configs name {first.detector.name!r}")
  detector, variables = factory.build(first.detector)
  side = int(first.data.letterbox)
  bundle.mkdir(parents=True, exist_ok=True)
  blobs, shapes = [], []
  for path in _source_images([dict(s) for s in first.data.sources], limit):
    rgb = _resize_long_side(path, side)
    blobs.append(np.frombuffer(pack_image(rgb), np.uint8))
    shapes.append(rgb.shape[:2])
  if not blobs:
    raise BundleError("no training images found in data.sources")
  offsets = np.cumsum([0] + [b.size for b in blobs]).astype(np.int64)
  np.savez(bundle / IMAGES, data=np.concatenate(blobs), offsets=offsets,
           shapes=np.asarray(shapes, np.int64))
  (bundle / DETECTOR).write_bytes(flax.serialization.msgpack_serialize(
      jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(variables))))
  manifest = {
      "version": BUNDLE_VERSION, "letterbox": side,
      "detector": {"size": first.detector.size, "img_size": int(first.detector.img_size),
                   "identity": factory.identity(first.detector),
                   "feature_names": list(detector.feature_names),
                   "channels": factory.feature_channels(detector)},
      "methods": {m: json.loads(json.dumps(c.to_dict(), default=list)) for m, c in configs.items()},
  }
  (bundle / MANIFEST).write_text(json.dumps(manifest, indent=1))
  total = sum(p.stat().st_size for p in bundle.iterdir())
  print(f"bundle {bundle}: {len(blobs)} images, {len(methods)} methods, {total / 1e6:.1f} MB")
  return manifest


# ----------------------------------------------------------------------------------------------
# train (JAX, flax, optax, numpy)

class _Attrs(dict):
  """A JSON config read as `train_lib` reads an ml_collections ConfigDict: attributes (nested
  dicts as `_Attrs`), `.get` and `.to_dict`."""

  def __getattr__(self, key: str) -> Any:
    try:
      value = self[key]
    except KeyError as e:
      raise AttributeError(key) from e
    return _Attrs(value) if isinstance(value, dict) else value

  def to_dict(self) -> dict[str, Any]:
    return json.loads(json.dumps(self))


def read_bundle(bundle: Path) -> tuple[dict[str, Any], np.ndarray, bytes]:
  """(manifest, uint8 letterbox canvases (N, S, S, 3), detector msgpack); BundleError if unsound."""
  for name in (MANIFEST, IMAGES, DETECTOR):
    if not (bundle / name).is_file():
      raise BundleError(f"{bundle} is not a sweep bundle: {name} is missing (run `pack` first)")
  try:
    manifest = json.loads((bundle / MANIFEST).read_text())
  except json.JSONDecodeError as e:
    raise BundleError(f"{bundle / MANIFEST} is damaged ({e})") from e
  if manifest.get("version") != BUNDLE_VERSION:
    raise BundleError(f"bundle version {manifest.get('version')!r}; this script reads "
                      f"{BUNDLE_VERSION}")
  side = int(manifest["letterbox"])
  with np.load(bundle / IMAGES, allow_pickle=False) as z:
    data, offsets, shapes = z["data"], z["offsets"], z["shapes"]
  if offsets.size != len(shapes) + 1 or offsets[-1] != data.size or np.any(np.diff(offsets) < 0):
    raise BundleError(f"{bundle / IMAGES}: offsets disagree with the data")
  canvases = np.stack([
      letterbox_canvas(unpack_image(data[a:b].tobytes(), int(h), int(w)), side)
      for a, b, (h, w) in zip(offsets[:-1], offsets[1:], shapes)])
  return manifest, canvases, (bundle / DETECTOR).read_bytes()


def make_crops(size: int, batch: int, scale_range: Sequence[float], hflip: bool):
  """`crops(canvases, key) -> float32 (batch, size, size, 3) in [0, 1]`: long side f x canvas,
  f ~ U(scale_range), a uniform crop of the (gray-padded) scaled canvas, flipped half the time."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  lo, hi = (float(v) for v in scale_range)

  def one(canvas, f, offset, flip):
    side = canvas.shape[0]
    extent = side * jnp.maximum(f, 1.0)  # the scaled canvas, padded back to at least `side`
    t = extent / 2 - offset - side / 2 * f  # out = in * f + t (per axis)
    x = jax.image.scale_and_translate(canvas.astype(jnp.float32) - PAD_VALUE, (size, size, 3),
                                      (0, 1), jnp.stack([f, f]), t, "linear", antialias=True)
    x = jnp.clip(jnp.round(x + PAD_VALUE), 0, 255)
    return jnp.where(flip, x[:, ::-1], x) / 255.0

  def crops(canvases, key):
    k = jax.random.split(key, 4)
    side = canvases.shape[1]
    idx = jax.random.randint(k[0], (batch,), 0, canvases.shape[0])
    f = jax.random.uniform(k[1], (batch,), minval=lo, maxval=hi)
    room = side * jnp.maximum(f, 1.0) - size
    offset = jnp.floor(jax.random.uniform(k[2], (batch, 2)) * (room[:, None] + 1))
    flip = (jax.random.uniform(k[3], (batch,)) < 0.5) & hflip
    return jax.vmap(one)(canvases[idx], f, offset, flip)

  return crops


def make_windows(size: int, full: int):
  """`windows(features, key)`: with `data.crop_features` part 1 runs on the whole `full`-pixel
  canvas and each example keeps a `size`-pixel window of its maps, at a random offset that is a
  multiple of the coarsest stride, the same window at every scale (as
  `training.feature_cache.FeatureCache.batch`)."""
  import jax  # pylint: disable=g-import-not-at-top

  def windows(feats, key):
    strides = {s: full // a.shape[1] for s, a in feats.items()}
    coarsest = max(strides.values())  # window offsets are multiples of it
    n = next(iter(feats.values())).shape[0]
    offsets = jax.random.randint(key, (n, 2), 0, (full - size) // coarsest + 1) * coarsest

    def cut(a, st):
      one = lambda x, o: jax.lax.dynamic_slice(x, (o[0] // st, o[1] // st, 0),
                                               (size // st, size // st, x.shape[-1]))
      return jax.vmap(one)(a, offsets)

    return {s: cut(a, strides[s]) for s, a in feats.items()}

  return windows


def fit_steps(done: int, rate: float, left_s: float, compile_s: float, mixed_fraction: float,
              max_steps: int) -> tuple[int, bool]:
  """(total steps, whether to keep the mixed phase) for a method that has run `done` steps at
  `rate` steps/s with `left_s` seconds of its share left. The straight-through phase (the last
  `mixed_fraction` of the steps) needs a second compile of about `compile_s`; it is dropped where
  it would run for less time than that compile takes. At least one more step runs."""
  keep_mixed = mixed_fraction > 0 and mixed_fraction * (left_s - compile_s) >= compile_s
  if keep_mixed:
    left_s -= compile_s
  return max(min(max_steps, done + int(rate * max(left_s, 0.0) * 0.95)), done + 1), keep_mixed


def train_method(name: str, cfg: Mapping[str, Any], det: Any, det_vars: Any, canvases: Any,
                 manifest: Mapping[str, Any], seconds: float, max_steps: int,
                 warm: tuple[dict, Any] | None, out: Path, log=print, warm_from: str = ""
                 ) -> tuple[dict, Any]:
  """Trains one method within `seconds` (at most `max_steps` steps), from `warm` (header with
  "codec_kwargs", parameters; named `warm_from`) if given, and writes its zoo file."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from hssc_jax import train_lib, zoo  # pylint: disable=g-import-not-at-top
  from hssc_jax.codecs import registry  # pylint: disable=g-import-not-at-top
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  cfg = _Attrs(cfg)
  d, loss, optim = cfg["data"], cfg["loss"], cfg.optim
  size, batch = int(d["size"]), int(d["batch_size"])
  scales, channels = manifest["detector"]["feature_names"], manifest["detector"]["channels"]
  if d.get("crop_features", False):  # part 1 on the whole canvas, windows of its maps
    crops = make_crops(canvases.shape[1], batch, d["scale_range"], bool(d["hflip"]))
    windows = make_windows(size, canvases.shape[1])
    part1 = lambda v, c, k: windows(det.part1(v, crops(c, k)), jax.random.fold_in(k, 1))
  else:
    crops = make_crops(size, batch, d["scale_range"], bool(d["hflip"]))
    part1 = lambda v, c, k: det.part1(v, crops(c, k))
  features_of = jax.jit(lambda c, v, k: part1(v, c, k))
  rng = jax.random.PRNGKey(int(cfg["seed"]))
  data_key, norm_key, fit_key = (jax.random.fold_in(rng, i) for i in (1, 2, 3))

  lmbdas = train_lib.lambdas_of(cfg)
  feature_norm = None
  if cfg["codec"].get("normalize", False):
    if warm is not None:
      feature_norm = warm[0].get("codec_kwargs", {}).get("feature_norm")
    if feature_norm is None:
      n = int(cfg["codec"].get("normalize_batches", 32))
      keys = (jax.random.fold_in(norm_key, i) for i in range(n))
      batches = (jax.device_get(features_of(canvases, det_vars, k)) for k in keys)
      feature_norm = train_lib.fit_feature_norm(batches, n, scales)
  kwargs = train_lib.codec_kwargs(cfg, feature_norm, warm[0].get("codec_kwargs") if warm else None)
  codec = registry.build_codec(cfg["codec"]["name"], kwargs, scales, channels)

  tx = optax.chain(optax.clip_by_global_norm(float(optim["clip_norm"])),
                   optax.inject_hyperparams(optax.adam)(learning_rate=0.0, b1=float(optim["b1"]),
                                                        b2=float(optim["b2"])))
  feats0 = codec.normalize(features_of(canvases, det_vars, data_key))
  init = lambda k, f: codec.init({"params": k, "noise": k}, f, True)["params"]
  params = jax.jit(init)(rng, feats0)
  if warm is not None:
    params, copied, total = train_lib.overlay_params(params, warm[1], skip_mismatched=True)
    log(f"{name}: initialised {copied} of {total} parameter arrays from {warm_from}")
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  task_weight = float(loss["task_weight"])
  task_fn = (lambda f: factory.task_outputs(det, det_vars, f)) if task_weight > 0 else None
  sw = dict(loss["scale_weights"])
  pixels = jnp.full((batch,), float(size * size), jnp.float32)

  def compiled(c):
    step = train_lib.make_train_step(c, tx, rng, lmbdas, sw, task_fn=task_fn,
                                     task_weight=task_weight,
                                     quality_weights=train_lib.quality_weights_of(cfg))

    def run(state, canvases, det_vars, lr, key):
      feats = jax.lax.stop_gradient(part1(det_vars, canvases, key))
      state["opt_state"][1].hyperparams["learning_rate"] = lr
      return step(state, {"features": feats, "pixels": pixels})

    return jax.jit(run, donate_argnums=(0,))

  main_fn = compiled(codec)
  mixed_fraction = float(loss.get("mixed_fraction", 0.0))
  steps, done, compile_s, metrics = max_steps, 0, None, {}
  schedule_steps = None
  while done < steps:
    mixed = mixed_fraction > 0 and done >= steps - int(round(mixed_fraction * steps))
    if mixed and main_fn is not None:
      main_fn = None  # frees the main executable
      fn = compiled(codec.clone(train_quantization="mixed"))
    elif not mixed:
      fn = main_fn
    if schedule_steps != steps:  # the step count is set once, after the speed is measured
      schedule, schedule_steps = train_lib.learning_rate_schedule(optim, steps), steps
    lr = jnp.asarray(schedule(done), jnp.float32)
    state, metrics = fn(state, canvases, det_vars, lr, jax.random.fold_in(data_key, done))
    done += 1
    if done == 1:
      jax.block_until_ready(metrics)
      compile_s = time.time() - t0
    if done == 21:  # fit the step count to the time share (`fit_steps`)
      jax.block_until_ready(metrics)
      rate = 20 / max(time.time() - t0 - compile_s, 1e-6)
      steps, keep_mixed = fit_steps(done, rate, seconds - (time.time() - t0), compile_s,
                                    mixed_fraction, max_steps)
      if mixed_fraction > 0 and not keep_mixed:
        log(f"{name}: no mixed phase: its compile (~{compile_s:.0f} s) would outlast it")
        mixed_fraction = 0.0
      log(f"{name}: compiled in {compile_s:.0f} s, {rate:.1f} steps/s -> {steps} steps")
    if done % 200 == 0 or done == steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(f"{name}: loss {m['loss']} at step {done}: training diverged")
      log(f"{name} step {done}/{steps} q{int(m['quality'])}: loss {m['loss']:.4f} bpp "
          f"{m['bpp']:.4f} mse {m['mse']:.4g}")
  params = jax.device_get(state["params"])
  final = {k: float(v) for k, v in jax.device_get(metrics).items()}
  final["seconds"] = time.time() - t0
  hook = getattr(codec, "post_training_constants", None)
  if hook is not None and task_fn is not None:
    n = int(cfg.get("calibrate_batches", 4))
    fit = [codec.normalize(features_of(canvases, det_vars, jax.random.fold_in(fit_key, i)))
           for i in range(n)]
    # The post-training fits (MFIBA's calibration, the paper form's range and channel order) are
    # small and run on the CPU: on an H200 under JAX 0.11.2 the stand-alone jit of the paper form's
    # `fuse` failed to compile ("Reshape input and output shapes must be the same, got 8x4x4 ->
    # 8x4x4x16") where the training step holding the same graph ran.
    cpu = jax.devices("cpu")[0]
    host_vars = jax.device_put(jax.device_get(det_vars), cpu)
    with jax.default_device(cpu):
      kwargs.update(hook(params, jax.device_get(fit), float(size) ** 2,
                         lambda f: factory.task_outputs(det, host_vars, f)))
  zoo.save(name, cfg["codec"]["name"], kwargs, scales, channels, params, out,
           detector=manifest["detector"]["identity"], lmbdas=list(lmbdas), steps=done,
           mixed_steps=int(round(mixed_fraction * done)), init_from=warm_from, batch_size=batch,
           final_metrics=final)
  split_large(zoo.path_of(name, out))
  log(f"{name}: {done} steps in {final['seconds']:.0f} s -> {zoo.path_of(name, out)}")
  return {"codec_kwargs": json.loads(json.dumps(kwargs, default=list))}, params


def split_large(path: Path, part_bytes: int = PART_BYTES) -> list[Path]:
  """Splits a file over `part_bytes` into `<name>.part<i>` files (joined by `join_parts`)."""
  data = path.read_bytes()
  if len(data) <= part_bytes:
    return [path]
  parts = []
  for i in range(0, len(data), part_bytes):
    p = path.with_name(f"{path.name}.part{i // part_bytes}")
    p.write_bytes(data[i:i + part_bytes])
    parts.append(p)
  path.unlink()
  return parts


def join_parts(folder: Path) -> list[Path]:
  """Rebuilds every `<name>.part0..n` set in `folder` into `<name>`; the joined files."""
  joined = []
  for first in sorted(folder.glob("*.part0")):
    stem = first.name[:-len(".part0")]
    parts, i = [], 0
    while (folder / f"{stem}.part{i}").exists():
      parts.append(folder / f"{stem}.part{i}")
      i += 1
    (folder / stem).write_bytes(b"".join(p.read_bytes() for p in parts))
    for p in parts:
      p.unlink()
    joined.append(folder / stem)
  return joined


def read_init(folder: Path, name: str, codec: str, detector: Any) -> tuple[dict, Any] | None:
  """(header, float32 parameters) of the zoo file of `name` in `folder`, or None if it has none;
  BundleError for a damaged file or one of another codec or detector."""
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  path = zoo.path_of(name, folder)
  if not path.exists():
    return None
  try:
    info, params = zoo.read(path)
  except zoo.ZooError as e:
    raise BundleError(f"--init-from: {e}") from e
  where = lambda d: {k: v for k, v in (d or {}).items() if k != "weights"}  # a path, not weights
  if info.get("codec") != codec or where(info.get("detector")) != where(detector):
    raise BundleError(f"--init-from: {path} is a {info.get('codec')!r} codec for detector "
                      f"{info.get('detector')!r}; the sweep trains {codec!r} for {detector!r}")
  return info, params


def train(bundle: Path, out: Path, methods: Sequence[str] | None, minutes: float,
          max_steps: int, init_from: Path | None = None, batch_size: int | None = None) -> None:
  """Trains `methods` (None: every method of the bundle, warm-start sources first) in order, each
  from its zoo file in `init_from` where that holds one (a fine-tune), else from the sweep's model
  it starts from (`WARM_FROM`), else from scratch; `batch_size` replaces the configs' batch."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  from hssc_jax.detectors.yolov5 import YOLOv5  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  manifest, canvases, det_bytes = read_bundle(bundle)
  methods = methods or [m for m in METHODS if m in manifest["methods"]]
  unknown = [m for m in methods if m not in manifest["methods"]]
  if unknown:
    raise BundleError(f"the bundle has no config for {unknown}; it has {list(manifest['methods'])}")
  info = manifest["detector"]
  inits = {}  # checked before any training: a bad file fails now, not minutes into the sweep
  if init_from is not None:
    inits = {m: read_init(init_from, m, manifest["methods"][m]["codec"]["name"], info["identity"])
             for m in methods}
    if not any(inits.values()):
      raise BundleError(f"--init-from {init_from}: no zoo file of {methods} there")
  det = YOLOv5(size=info["size"], img_size=int(info["img_size"]))
  template = jax.eval_shape(det.init, jax.random.PRNGKey(0))
  try:
    det_vars = flax.serialization.from_state_dict(
        template, flax.serialization.msgpack_restore(det_bytes))
  except Exception as e:  # pylint: disable=broad-except
    raise BundleError(f"{bundle / DETECTOR} does not hold YOLOv5{info['size']} variables "
                      f"({e})") from e
  det_vars = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), det_vars))
  canvases = jax.device_put(canvases)
  out.mkdir(parents=True, exist_ok=True)
  print(f"{len(canvases)} images on {jax.devices()[0].device_kind}; read in "
        f"{time.time() - t0:.0f} s", flush=True)
  trained = {}
  for i, name in enumerate(methods):
    share = (minutes * 60 - (time.time() - t0)) / (len(methods) - i)
    cfg = manifest["methods"][name]
    if batch_size is not None:
      cfg = dict(cfg, data=dict(cfg["data"], batch_size=int(batch_size)))
    warm = inits.get(name)
    warm_from = str(zoo.path_of(name, init_from)) if warm is not None else ""
    if warm is None and name in WARM_FROM and WARM_FROM[name] in trained:
      warm, warm_from = trained[WARM_FROM[name]], f"the sweep's {WARM_FROM[name]}"
    trained[name] = train_method(name, cfg, det, det_vars, canvases, manifest, share, max_steps,
                                 warm, out, log=lambda s: print(s, flush=True),
                                 warm_from=warm_from)
  print(f"sweep done in {(time.time() - t0) / 60:.1f} min: {sorted(p.name for p in out.iterdir())}")


# ----------------------------------------------------------------------------------------------
# finish (here)

def finish(out: Path, install: bool) -> list[str]:
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  join_parts(out)
  names = zoo.names(out)
  if not names:
    raise BundleError(f"{out} holds no zoo files")
  for name in names:
    kwargs = zoo.read_info(zoo.path_of(name, out))["codec_kwargs"]
    qualities = max(int(kwargs.get("qualities", 1)), 1)
    for q in range(qualities):
      zoo.load(name, q, folder=out)  # parameters' SHA-256 and every fingerprint
    print(f"{name}: {qualities} qualities load")
    if install:
      shutil.copy2(zoo.path_of(name, out), zoo.path_of(name))
  return names


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  p = sub.add_parser("pack")
  p.add_argument("bundle", type=Path)
  p.add_argument("--methods", nargs="+", default=list(METHODS) + list(VARIANTS))
  p.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
  t = sub.add_parser("train")
  t.add_argument("bundle", type=Path)
  t.add_argument("out", type=Path)
  t.add_argument("--methods", nargs="+", default=None)
  t.add_argument("--minutes", type=float, default=7.0)
  t.add_argument("--max-steps", type=int, default=1_000_000)
  t.add_argument("--init-from", type=Path, default=None,
                 help="a zoo folder (hssc_jax/assets/zoo): fine-tune each method from its file")
  t.add_argument("--batch-size", type=int, default=None,
                 help="crops per step instead of the configs' (a GPU idles at their 8)")
  f = sub.add_parser("finish")
  f.add_argument("out", type=Path)
  f.add_argument("--install", action="store_true")
  args = ap.parse_args(argv)
  if args.command == "pack":
    pack(args.bundle, args.methods, args.limit)
  elif args.command == "train":
    if args.batch_size is not None and args.batch_size < 1:
      ap.error(f"--batch-size must be at least 1, got {args.batch_size}")
    train(args.bundle, args.out, args.methods, args.minutes, args.max_steps, args.init_from,
          args.batch_size)
  else:
    finish(args.out, args.install)


if __name__ == "__main__":
  main()
