"""`make demo`: a small but real end-to-end comparison that needs nothing but the repository.

```
generated shapes set (COCO format, train + val)       ShapesNet (shipped: hssc_jax/assets)
  -> train the base codec and HSSC at two lambdas on ShapesNet's P3-P5 (train.py's library)
  -> eval.py "codecs" mode on val: HEVC feature anchor, HEVC image anchor, learned codecs,
     every image through a real bitstream -> mAP vs bpp, BD-rate table, RD plot
```

  python -m hssc_jax.demo --workdir demo_out          # about 10 minutes on 2 CPU cores
  python -m hssc_jax.demo --workdir demo_out --quick  # a 2-minute version (fewer steps and QPs)
  python -m hssc_jax.demo --workdir demo_out --ablation  # the base codec's recipe, part by part

Everything is deterministic given the seeds and resumes when rerun (datasets, runs and
operating points already finished are kept). Results: demo_out/eval/{results.csv, results.json,
rd.png}. The entropy-coding demo of the foundation lives on in `hssc_jax.entropy_demo`.
"""

import argparse
import json
import time
from pathlib import Path

# Codec sizes for the demo: the real configs' structure at widths that suit ShapesNet's small maps.
_WIDTHS = {
    "base": dict(latent_channels=24, hidden_channels=32, hyper_channels=16, context_hidden=(16,)),
    "hssc": dict(compact_channels=48, transform_channels=32, latent_channels=32,
                 hidden_channels=32, hyper_channels=16, context_hidden=(16,),
                 attention_channels=8),
    "lmfc": dict(),
}


def make_data(root: Path, train_images: int, val_images: int) -> None:
  from hssc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  for split, n, seed, first in (("train", train_images, 0, 1), ("val", val_images, 1, 100_000)):
    if not (root / "annotations" / f"instances_{split}.json").exists():
      synthetic.make_shapes_dataset(root, split=split, num_images=n, image_size=128,
                                    vary_size=True, seed=seed, first_image_id=first)


# The base codec's recipe ablation (`--ablation`): each variant turns one part of the recipe off.
ABLATIONS = {
    "base_no_norm": {"codec.normalize": False},
    "base_no_task": {"loss.task_weight": 0.0},
    "base_no_mixed": {"loss.mixed_fraction": 0.0},
}


def train_config(method: str, lmbda: float, steps: int, root: Path):
  """configs/<method>.py:smoke widened to `_WIDTHS`, on the shipped ShapesNet and the demo set
  (an `ABLATIONS` name: the base config with that part of the recipe off)."""
  import importlib  # pylint: disable=g-import-not-at-top
  family = "base" if method in ABLATIONS else method
  cfg_mod = importlib.import_module(f"configs.{family}")
  config = cfg_mod.get_config(f"smoke,lmbda={lmbda},steps={steps}")
  with config.unlocked():
    config.codec.kwargs.update(_WIDTHS[family])
    for key, value in ABLATIONS.get(method, {}).items():
      section, field = key.split(".")
      config[section][field] = value
    config.detector.weights = ""  # the shipped checkpoint
    config.data.sources = [dict(root=str(root / "data"), split="train")]
    config.data.data_dir = str(root / "tfds")
    config.data.synthetic_images = 0
    config.data.size = 128
    config.data.batch_size = 8
    config.data.cache_features = True
    config.data.cache_variants = 4
    config.data.cache_dir = str(root / "feature_cache")
    config.steps = steps  # the smoke variant fixes 6
    config.optim.lr = 2e-3
    config.optim.warmup_steps = max(steps // 10, 1)
    config.log_every = max(steps // 4, 1)
    config.checkpoint_every = steps
    config.progress = False
  return config


def run(workdir: str, steps: int = 400, lambdas=(0.05, 1.0), methods=("base", "hssc"),
        train_images: int = 128, val_images: int = 64, quick: bool = False) -> dict:
  from configs.eval import demo as demo_config  # pylint: disable=g-import-not-at-top
  from hssc_jax import codec_eval  # pylint: disable=g-import-not-at-top
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  root = Path(workdir)
  t0 = time.time()
  make_data(root / "data", train_images, val_images)
  timings = {"data_s": time.time() - t0}
  for method in methods:
    for lm in lambdas:
      t = time.time()
      out = root / "runs" / f"{method}_l{lm:g}"
      metrics = train_lib.train_and_evaluate(train_config(method, lm, steps, root), str(out))
      timings[f"train_{method}_l{lm:g}_s"] = time.time() - t
      print(f"trained {method} lambda {lm:g}: {json.dumps(metrics)[:160]}", flush=True)
  t = time.time()
  config = demo_config.get_config(
      f"root={root},methods={'+'.join(methods)},lambdas={'+'.join(f'{x:g}' for x in lambdas)}"
      + (",smoke" if quick else ""))
  report = codec_eval.evaluate_codecs(config, root / "eval")
  timings["eval_s"] = time.time() - t
  timings["total_s"] = time.time() - t0
  (root / "timings.json").write_text(json.dumps(timings, indent=1))
  print(f"\ndemo finished in {timings['total_s'] / 60:.1f} min: see {root / 'eval' / 'rd.png'}")
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="demo_out")
  parser.add_argument("--quick", action="store_true", help="fewer steps, images and QPs")
  parser.add_argument("--ablation", action="store_true",
                      help="the base codec with each part of the recipe off (normalization, task "
                      "term, mixed fine-tune), evaluated beside the full recipe")
  args = parser.parse_args()
  methods = ("base",) + tuple(ABLATIONS) if args.ablation else ("base", "hssc")
  if args.quick:
    run(args.workdir, steps=60, train_images=32, val_images=16, quick=True, methods=methods)
  else:
    run(args.workdir, methods=methods)


if __name__ == "__main__":
  main()
