"""Shared pieces of the training configs (big_vision style: `get_config(arg)` returns a locked dict).

Arguments after the colon are comma-separated `key=value` pairs or flags, e.g.
`configs/base.py:smoke`, `configs/base.py:lmbda=0.02,steps=20000`.
"""

import os
from pathlib import Path

import ml_collections

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HSSC_SHARED", REPO.parent / "shared"))

# lambda values of the standard rate-distortion sweep: the weight of the distortion (mean squared
# error of per-channel normalized features + TASK_WEIGHT x the object-weighted head distillation,
# `training.loss`) against bits per pixel. A variable-rate model trains one quality per lambda.
LAMBDAS = (0.015, 0.05, 0.15, 0.5, 1.5, 5.0)
TASK_WEIGHT = 100.0


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'smoke,lmbda=2' -> ConfigDict(smoke=True, lmbda=2.0, ...), typed like the defaults."""
  out = dict(defaults)
  for token in filter(None, (arg or "").split(",")):
    key, _, value = token.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    if isinstance(defaults[key], bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    else:
      out[key] = type(defaults[key])(value)
  return ml_collections.ConfigDict(out)


def training_config(codec_name: str, codec_kwargs: dict, arg) -> ml_collections.ConfigDict:
  """The common training config around one codec; `arg` holds smoke, lmbda, steps, task.

  lmbda > 0 trains one model at that lambda; lmbda = 0 (the default) trains one variable-rate
  model with a quality per lambda of LAMBDAS.
  """
  c = ml_collections.ConfigDict()
  c.codec = ml_collections.ConfigDict({"name": codec_name, "kwargs": codec_kwargs})
  c.codec.normalize = True  # per-channel mean/std fitted on the training features (model constants)
  c.codec.normalize_batches = 64

  c.detector = ml_collections.ConfigDict()
  c.detector.name = "yolov5"
  c.detector.size = "n"
  c.detector.img_size = 640
  c.detector.weights = str(SHARED / "weights" / "yolov5n-coco-v6.0.pt")

  c.data = ml_collections.ConfigDict()
  c.data.sources = [
      {"root": str(SHARED / "data" / "coco-mini"), "split": "train2017"},
      {"root": str(SHARED / "data" / "coco-tiny"), "split": "train2017"},
  ]
  c.data.synthetic_images = 0  # > 0: generate this many shapes images and train on them instead
  c.data.synthetic_size = 128
  # size x size crops of images letterboxed as at evaluation (long side f x 640, gray borders).
  # size = letterbox trains on the whole square, as evaluation codes it: the hyperprior sees P5's
  # full 20 x 20 grid and its gray borders (320 windows, the default until stop 53, gave the base
  # codec twice the rate at the same mAP; docs/zoo_history.md, stop 53). Batch 2 of 640 holds the
  # values of batch 8 of 320.
  c.data.letterbox = 640
  c.data.size = 640
  c.data.batch_size = 2
  c.data.scale_range = (0.8, 1.05)
  c.data.hflip = True
  c.data.seed = 0
  c.data.data_dir = ""
  c.data.cache_features = True
  # True: part 1 runs on the whole letterboxed square and the cache cuts size x size windows
  # from its maps, so the coarse scales hold the values evaluation codes (a crop pads where the
  # square has context; hssc_jax.training.feature_cache). False: part 1 on image crops.
  c.data.crop_features = True
  # Passes over the sources (each image at a new scale and flip); with crop_features each pass
  # stores whole-image maps (1.4 MB per image for YOLOv5n) and windows are drawn per batch.
  c.data.cache_variants = 16
  c.data.cache_dir = ""

  c.loss = ml_collections.ConfigDict()
  c.loss.lmbda = arg.lmbda if arg.lmbda > 0 else LAMBDAS[len(LAMBDAS) // 2]
  c.loss.lmbdas = () if arg.lmbda > 0 else LAMBDAS
  c.loss.scale_weights = {"p3": 1.0, "p4": 1.0, "p5": 1.0}
  c.loss.quality_weights = ()  # variable rate: relative draw weight per quality; () = uniform
  c.loss.task_weight = arg.task
  c.loss.mixed_fraction = 0.15  # the last 15% of steps: straight-through ("mixed") quantization

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.final_lr_fraction = 0.05
  c.optim.clip_norm = 1.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.trainable = ""  # a regular expression over parameter paths: train those alone; "" = all

  c.steps = arg.steps
  c.log_every = 50
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  c.seed = 0
  c.init_from = ""  # warm start (new optimizer): a workdir's latest parameters, "zoo:<name>", a .hsz file,
  # or several joined by "+" (later sources override earlier ones at the same parameter path)
  c.init_skip_mismatched = False  # warm start: leave arrays whose shape differs at their init
  c.init_widen = False  # warm start of a wider codec: narrower arrays fill the leading blocks
  c.init_exclude = ""  # warm start: a regular expression; source arrays whose path matches stay out
  c.distributed = False
  c.progress = True

  if arg.smoke:
    c.detector.name = "shapes_net"
    c.detector.size = ""
    c.detector.img_size = 128
    c.detector.weights = "random"
    c.data.sources = []
    c.data.synthetic_images = 8
    c.data.synthetic_size = 96
    c.data.size = 64
    c.data.letterbox = 0
    c.data.batch_size = 2
    c.data.cache_features = False
    c.data.crop_features = False
    c.codec.normalize_batches = 2
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.steps = 6
    c.log_every = 2
    c.checkpoint_every = 3
  return c


# the config arguments `refinement_kwargs` reads, at their defaults
REFINE_DEFAULTS = dict(refine=False, refine_from=0, refine_scales="p5")


def refinement_kwargs(arg, config_name: str) -> dict:
  """Codec kwargs of the `refine` / `refine_from` / `refine_scales` arguments
  (hssc_jax.codecs.refinement): each refined scale's error (P5 by default; `refine_scales=p4+p5`
  for more) coded by a 64-channel hyperprior one stride-2 stage deep, from quality `refine_from`
  up; a ValueError for `refine_from` or `refine_scales` without `refine` (they would be ignored)."""
  for key, what in (("refine_from", "first quality"), ("refine_scales", "scales")):
    if arg[key] != REFINE_DEFAULTS[key] and not arg.refine:
      raise ValueError(f"configs/{config_name}.py: {key} (the refinement's {what}) needs refine")
  if not arg.refine:
    return {}
  return dict(refine_scales=tuple(arg.refine_scales.split("+")), refine_latent_channels=64,
              refine_stages=1, refine_from=arg.refine_from)


def sweep(base: dict | None = None) -> list[dict]:
  """One override set per lambda of the standard sweep (big_vision `get_hyper` style)."""
  return [dict(base or {}, **{"loss.lmbda": lm, "loss.lmbdas": ()}) for lm in LAMBDAS]
