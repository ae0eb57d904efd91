r"""Gives a zoo model one factorized prior of its hyper-latents per quality (`training.z_priors`).

  python scripts/fit_z_priors.py base --out runs/zp                       # zoo:base -> runs/zp/base.hsz
  python scripts/fit_z_priors.py base --folder runs/cand --out runs/zp --batches 200 \
    --config.data.cache_dir=runs/feature_cache

The priors are fitted on the features a training run of `--config` (default configs/base.py, whose
data settings every method shares) trains on: its first `--batches` batches, from its feature
cache (built in `data.cache_dir` if missing). Only the z streams change: decoded features, and so
mAP, stay bit for bit; the per-quality bits per z element before and after are printed and kept in
the file's header (`z_priors_fit`).
"""

import argparse
import importlib.util
import itertools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hssc_jax import train_lib  # pylint: disable=wrong-import-position
from hssc_jax import zoo  # pylint: disable=wrong-import-position


def training_config(spec: str, overrides: list[str]):
  """`path[:arg]` of a config file, with `--config.a.b=value` overrides (values as Python
  literals where they parse, else strings)."""
  path, _, arg = spec.partition(":")
  loader = importlib.util.spec_from_file_location("fit_config", ROOT / path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(arg or None)  # locked: an unknown key or a wrong type is refused
  for item in overrides:
    key, _, value = item.removeprefix("--config.").partition("=")
    try:
      value = json.loads(value)
    except ValueError:
      pass
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model", help="zoo model name")
  parser.add_argument("--folder", default=None, help="zoo folder of the model (default: the zoo)")
  parser.add_argument("--out", required=True, help="folder for the new zoo file")
  parser.add_argument("--config", default="configs/base.py", help="training config (data source)")
  parser.add_argument("--batches", type=int, default=100, help="training batches to fit on")
  parser.add_argument("--steps", type=int, default=1500, help="Adam steps of the fit")
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.") or "=" not in o]
  if bad:
    parser.error(f"unknown arguments {bad}")
  config = training_config(args.config, overrides)
  with tempfile.TemporaryDirectory() as workdir:
    pyramids = itertools.islice(train_lib.feature_stream(config, workdir), args.batches)
    path, report = zoo.fit_z_priors(zoo.path_of(args.model, args.folder), pyramids, args.out,
                                    steps=args.steps)
  for module, r in report.items():
    pairs = " ".join(f"q{q} {b:.3f}->{a:.3f}" for q, (b, a) in
                     enumerate(zip(r["bits_before"], r["bits_after"])))
    print(f"{module} ({r['elements']} elements per quality): bits per element {pairs}")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
