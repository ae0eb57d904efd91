"""A disk cache of detector features for codec training.

Part 1 of a frozen detector is the same function at every step, so its outputs on augmented crops
can be computed once and reused for many training steps: `build` runs the training input pipeline
for `variants` passes over the sources, applies part 1 under jit and stores every scale as a
float16 `.npy` (memory-mapped when read). `FeatureCache.batch(step)` then draws a batch with
randomness keyed by (seed, step), so a resumed run sees exactly the batches it would have seen.
Flips happen to the images before part 1 (the pipeline's `hflip`), never to the cached feature
maps: a flipped feature map is not the feature map of the flipped image.

With `crop` (`build(..., crop=c)`) part 1 runs on the whole letterboxed square and each batch is
cut from the stored maps: a window of c x c image pixels at a random offset that is a multiple of
the coarsest scale's stride, the same window at every scale. Part 1 run on a crop sees zero padding
where the full image has context, and its coarse maps differ most (YOLOv5n's P5 on 320-pixel crops
has a narrower distribution than on the 640 square evaluation codes, and a codec trained on the
former spends 4x the bits per P5 position on the latter); cropping the maps keeps evaluation's
values and the training cost of a small crop.

The cache folder is keyed by a digest of everything that determines its content (detector and its
weights, sources, crop size, augmentation, variants, seed); a finished cache has a `done` marker.
"""

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from hssc_jax import bitstream


class FeatureCache:
  """Read side: memory-mapped per-scale arrays plus per-example pixel counts."""

  def __init__(self, folder: str | Path, seed: int = 0, crop: int = 0):
    self.folder = Path(folder)
    meta = json.loads((self.folder / "meta.json").read_text())
    self.scales = meta["scales"]
    self.arrays = {s: np.load(self.folder / f"{s}.npy", mmap_mode="r") for s in self.scales}
    self.num_examples = int(next(iter(self.arrays.values())).shape[0])
    self.seed = seed
    full = int(meta["size"])
    self.size = int(crop or full)  # pixels of one training example's side
    self.strides = {s: full // a.shape[1] for s, a in self.arrays.items()}
    if any(self.size % st or full % st for st in self.strides.values()) or self.size > full:
      raise ValueError(f"feature cache {self.folder}: crop {self.size} does not fit the stored "
                       f"{full}-pixel maps with strides {self.strides}")
    self.full = full

  def batch(self, step: int, batch_size: int, shard_index: int = 0, num_shards: int = 1
            ) -> dict[str, Any]:
    """This process's share of the global batch of `step` (deterministic in (seed, step))."""
    rng = np.random.default_rng([self.seed, step])
    idx = np.sort(rng.choice(self.num_examples, batch_size * num_shards, replace=False))
    idx = idx[shard_index * batch_size:(shard_index + 1) * batch_size]
    if self.size < self.full:  # cut each window from the memory map: only it is read and converted
      coarsest = max(self.strides.values())  # window offsets are multiples of it
      n_off = (self.full - self.size) // coarsest + 1
      offsets = rng.integers(0, n_off, (batch_size * num_shards, 2))
      offsets = offsets[shard_index * batch_size:(shard_index + 1) * batch_size] * coarsest
      feats = {s: np.stack([a[i, y // self.strides[s]:(y + self.size) // self.strides[s],
                              x // self.strides[s]:(x + self.size) // self.strides[s]]
                            for i, (y, x) in zip(idx, offsets)])
               for s, a in self.arrays.items()}
    else:
      feats = {s: a[idx] for s, a in self.arrays.items()}
    feats = {s: np.asarray(v, np.float32) for s, v in feats.items()}
    return {"features": feats, "pixels": np.full((batch_size,), float(self.size**2), np.float32)}


def cache_key(**parts: Any) -> str:
  return bitstream.fingerprint(json.dumps(parts, sort_keys=True, default=str)).hex()[:16]


def build(folder: str | Path, batches: Iterator[Mapping[str, np.ndarray]], num_batches: int,
          part1: Callable[[np.ndarray], Mapping[str, Any]], scales: Sequence[str], size: int,
          meta: Mapping[str, Any], seed: int = 0, crop: int = 0) -> FeatureCache:
  """Fills `folder` with part-1 features of `num_batches` batches of `size`-pixel images (skipped
  when already done); `crop` > 0: batches are `crop`-pixel windows of the stored maps."""
  folder = Path(folder)
  if (folder / "done").exists():
    return FeatureCache(folder, seed, crop)
  folder.mkdir(parents=True, exist_ok=True)
  writers: dict[str, np.ndarray] = {}
  row = 0
  import tqdm  # pylint: disable=g-import-not-at-top
  for _ in tqdm.trange(num_batches, desc="caching features", unit="batch"):
    batch = next(batches)
    feats = {s: np.asarray(v) for s, v in part1(batch["image"]).items()}
    n = next(iter(feats.values())).shape[0]
    for s in scales:
      if s not in writers:
        shape = (num_batches * n,) + feats[s].shape[1:]
        writers[s] = np.lib.format.open_memmap(folder / f"{s}.npy", "w+", np.float16, shape)
      writers[s][row:row + n] = feats[s].astype(np.float16)
    row += n
  for w in writers.values():
    w.flush()
  (folder / "meta.json").write_text(json.dumps(dict(meta, scales=list(scales), size=size,
                                                    examples=row), indent=2, default=str))
  (folder / "done").write_text("ok\n")
  return FeatureCache(folder, seed, crop)
