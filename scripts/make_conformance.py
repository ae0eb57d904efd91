r"""Writes the conformance set: small models, their bitstreams and the decoded outputs.

  python scripts/make_conformance.py [--out tests/conformance]

`tests/test_conformance.py` decodes every committed bitstream with its committed model and compares
with the committed output, so a change that decodes existing bitstreams differently fails CI.
Rerun this script only for a deliberate format change, after raising the container's version
(`bitstream.FORMAT_VERSION` / `COMPACT_VERSION`): the old files then stay in git history.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from hssc_jax import bitstream, zoo
from hssc_jax.codecs import registry
from hssc_jax.codecs.anchor import FeatureAnchor
from hssc_jax.codecs.image_anchor import ImageAnchor

SCALES = ("p3", "p4", "p5")
CHANNELS = (4, 8, 8)
_KW = dict(latent_channels=8, hidden_channels=8, hyper_channels=8)
# Small versions of every learned codec; the base codec also carries feature normalization and
# two qualities (gain vectors), so those paths are pinned too.
MODELS = {
    "hyperprior": dict(**_KW, qualities=2, quality=1),
    "lmfc": dict(fused_channels=8, stages=0, predictor_hidden=8, **_KW),
    "hssc": dict(compact_channels=8, transform_channels=8, attention_channels=4, **_KW),
    "hsc": dict(core_channels=8, context_slices=2, context_hidden=(8,), **_KW),
    "mfiba": dict(mfip_channels=4, **_KW),
    "hssc_paper": dict(compact_channels=8, transform_channels=8, attention_channels=4, qps=(30,),
                       compact_range=(0.05, 0.95), permutation=(3, 7, 0, 5, 1, 6, 2, 4)),
}
IMAGE_SIZE = (90, 120)


def features(seed: int, size: int = 16) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {s: (1.5 + 2.0 * rng.normal(size=(1, size >> i, size >> i, c))).astype(np.float32)
          for i, (s, c) in enumerate(zip(SCALES, CHANNELS))}


def _norm():
  rng = np.random.default_rng(99)
  return [[s, (1.5 + 0.1 * rng.normal(size=c)).tolist(), (2.0 + 0.2 * rng.random(c)).tolist()]
          for s, c in zip(SCALES, CHANNELS)]


def write(out: Path) -> dict:
  out.mkdir(parents=True, exist_ok=True)
  cases = []
  for name, kw in MODELS.items():
    kw = dict(kw, feature_norm=_norm()) if name == "hyperprior" else dict(kw)
    codec = registry.build_codec(name, kw, SCALES, CHANNELS)
    key = jax.random.PRNGKey(len(name))
    params = codec.init({"params": key, "noise": key}, codec.normalize(features(0)), True)["params"]
    zoo.save(name, name, kw, SCALES, CHANNELS, params, out)
    model = zoo.load(name, kw.get("quality"), out)
    for header in ("compact", "full"):
      c = model.codec.clone(header=header)
      data = c.compress(model.params, model.tables, features(1), IMAGE_SIZE)
      decoded = c.decompress(model.params, model.tables, data)
      stem = f"{name}.{header}"
      (out / f"{stem}.hsjx").write_bytes(data)
      np.savez(out / f"{stem}.npz", **decoded)
      cases.append({"kind": "learned", "model": name, "quality": model.quality, "header": header,
                    "bitstream": f"{stem}.hsjx", "output": f"{stem}.npz"})
  anchor = FeatureAnchor((-1.0, 6.0), reorder="global")
  anchor.save(out / "feature_anchor.json")
  data = anchor.compress(features(2), IMAGE_SIZE, 32)
  (out / "feature_anchor.hsjx").write_bytes(data)
  np.savez(out / "feature_anchor.npz", **anchor.decompress(data))
  cases.append({"kind": "feature_anchor", "model": "feature_anchor.json", "header": "full",
                "bitstream": "feature_anchor.hsjx", "output": "feature_anchor.npz"})
  rng = np.random.default_rng(3)
  image = np.clip(np.cumsum(rng.integers(-8, 9, size=(*IMAGE_SIZE, 3)), axis=1) + 128, 0, 255)
  data = ImageAnchor().compress(image.astype(np.uint8), 37)
  (out / "image_anchor.hsjx").write_bytes(data)
  np.savez(out / "image_anchor.npz", image=ImageAnchor().decompress(data))
  cases.append({"kind": "image_anchor", "header": "full", "bitstream": "image_anchor.hsjx",
                "output": "image_anchor.npz"})
  manifest = {"format_version": bitstream.FORMAT_VERSION,
              "compact_version": bitstream.COMPACT_VERSION, "cases": cases}
  (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="tests/conformance")
  args = parser.parse_args()
  manifest = write(Path(args.out))
  total = sum(p.stat().st_size for p in Path(args.out).iterdir())
  print(f"{len(manifest['cases'])} conformance bitstreams in {args.out} ({total / 1e3:.0f} kB)")


if __name__ == "__main__":
  main()
