"""Training throughput of each learned codec: steps/s and images/s of the jitted train step.

  python benchmarks/train_step.py [--codecs base lmfc hssc hsc mfiba] [--batch 8] [--size 320]
                                  [--steps 20] [--out benchmarks/train_step.md]

Each codec is built from its config file (`configs/<name>.py`, the settings of the real runs;
`name:arg` passes an argument, e.g. `base:cross` for the zoo's cross-scale base codec) over
the YOLOv5n pyramid (P3/P4/P5 with 64/128/256 channels) of `--size` crops, the shapes that the
feature cache feeds during training. The step is the one `train.py` runs (`train_lib.
make_train_step`: normalization, a quality drawn per step, forward with noise, rate + lambda x
(MSE + task term through the YOLOv5n head), gradients, Adam), compiled once and warmed up; each codec then runs `--steps` steps and reports the median over 3 repeats. Features
are random (SiLU of Gaussian noise): throughput does not depend on the values. All codecs run in
the same process, one after the other, so their numbers compare directly.
"""

import argparse
import importlib
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from hssc_jax import train_lib  # pylint: disable=wrong-import-position
from hssc_jax.codecs import registry  # pylint: disable=wrong-import-position

SCALES = ("p3", "p4", "p5")
CHANNELS = (64, 128, 256)  # YOLOv5n
STRIDES = (8, 16, 32)


def machine() -> str:
  try:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    cpu = platform.processor()
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (f"{cpu or platform.machine()}, {jax.device_count()} JAX device(s) ({devices}), "
          f"Python {platform.python_version()}, JAX {jax.__version__}")


def bench(name: str, batch: int, size: int, steps: int) -> dict:
  module, _, arg = name.partition(":")  # "base:cross": configs/base.py with argument "cross"
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  stats = tuple((s, (0.0,) * c, (1.0,) * c) for s, c in zip(SCALES, CHANNELS))
  codec = registry.build_codec(config.codec.name, train_lib.codec_kwargs(config, stats), SCALES,
                               CHANNELS)
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  det_cfg = dict(config.detector)
  det_cfg["weights"] = "random"  # the head's cost does not depend on its weights
  det, det_vars = factory.build(det_cfg)
  task_fn = lambda f: factory.task_outputs(det, det_vars, f)
  rng = np.random.default_rng(0)
  feats = {s: jax.nn.silu(jnp.asarray(rng.normal(size=(batch, size // st, size // st, c)),
                                      jnp.float32))
           for s, c, st in zip(SCALES, CHANNELS, STRIDES)}
  batch_dict = {"features": feats, "pixels": jnp.full((batch,), float(size * size))}
  key = jax.random.PRNGKey(0)
  params = jax.jit(lambda k, f: codec.init({"params": k, "noise": k}, f, True)["params"])(key, feats)
  tx = train_lib.make_optimizer(config.optim, 1000)
  step = jax.jit(train_lib.make_train_step(codec, tx, key, train_lib.lambdas_of(config),
                                           dict(config.loss.scale_weights), task_fn=task_fn,
                                           task_weight=config.loss.task_weight),
                 donate_argnums=(0,))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  t0 = time.perf_counter()
  state, m = step(state, batch_dict)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch_dict)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t0) / steps)
  sec = statistics.median(times)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return {"codec": name, "params": n_params, "compile_s": compile_s, "steps_per_s": 1 / sec,
          "images_per_s": batch / sec}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--codecs", nargs="+", default=["base", "lmfc", "hssc", "hsc", "mfiba"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=320)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  rows = []
  for name in args.codecs:
    try:
      rows.append(bench(name, args.batch, args.size, args.steps))
    except ModuleNotFoundError as e:  # a codec or config that is not in this checkout
      print(f"skipping {name}: {e}", file=sys.stderr)
  lines = [f"Machine: {machine()}.",
           f"Command: `python benchmarks/train_step.py --codecs {' '.join(args.codecs)} "
           f"--batch {args.batch} --size {args.size} --steps {args.steps}`.",
           f"YOLOv5n pyramid of {args.size}x{args.size} crops, batch {args.batch}; median of 3 x "
           f"{args.steps} steps after compilation.", "",
           "| codec | parameters | compile (s) | steps/s | images/s |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['codec']} | {r['params']:,} | {r['compile_s']:.1f} | "
                 f"{r['steps_per_s']:.2f} | {r['images_per_s']:.1f} |")
  text = "\n".join(lines)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
