"""scripts/gpu_sweep.py: the bundle's image coding, the on-device augmentation, file splitting,
bad bundles, and a training path that imports none of the host-only packages (TensorFlow ...)."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_sweep", REPO / "scripts" / "gpu_sweep.py")
gpu_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_sweep)

# What the GPU machines lack (they have JAX, flax, optax, orbax and their dependencies).
HOST_ONLY = ("tensorflow", "tensorflow_datasets", "tensorflow_compression", "ml_collections",
             "av", "tqdm", "PIL", "matplotlib", "pycocotools", "bjontegaard", "torch")
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {HOST_ONLY!r}:
          raise ImportError("not on the GPU machine: " + name)
    sys.meta_path.insert(0, _Block())
    """)


def _photo(h, w, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  smooth = 60 + np.stack([yy * 120 / h, xx * 120 / w, (yy + xx) * 60 / (h + w)], -1)
  return np.clip(smooth + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(48, 64), (37, 51)])
def test_packed_image_keeps_luma_and_averages_chroma(h, w):
  rgb = _photo(h, w)
  out = gpu_sweep.unpack_image(gpu_sweep.pack_image(rgb), h, w)
  assert out.shape == (h, w, 3) and out.dtype == np.uint8
  luma = lambda x: gpu_sweep._rgb_to_ycbcr(x)[..., 0]
  # Y survives but for roundings (of Y, and of RGB after the chroma change; no clipping here)
  assert np.abs(luma(out) - luma(rgb)).max() <= 2.0
  err = np.abs(out.astype(float) - rgb).mean()
  assert 0 < err < 12  # chroma subsampling loses detail, never the picture
  flat = np.full((h, w, 3), (30, 140, 220), np.uint8)
  back = gpu_sweep.unpack_image(gpu_sweep.pack_image(flat), h, w)
  assert np.abs(back.astype(int) - flat).max() <= 1


def test_damaged_or_mismatched_packed_image_is_refused():
  blob = gpu_sweep.pack_image(_photo(16, 16))
  with pytest.raises(gpu_sweep.BundleError, match="damaged"):
    gpu_sweep.unpack_image(blob[:-5], 16, 16)
  with pytest.raises(gpu_sweep.BundleError, match="samples"):
    gpu_sweep.unpack_image(blob, 16, 18)


def test_crops_at_scale_one_are_slices_of_the_canvas():
  canvas = _photo(64, 64, seed=3)[None]
  crops = gpu_sweep.make_crops(size=24, batch=4, scale_range=(1.0, 1.0), hflip=False)
  out = np.asarray(jax.jit(crops)(canvas, jax.random.PRNGKey(0)))
  for crop in np.round(out * 255).astype(np.uint8):
    hits = [(y, x) for y in range(41) for x in range(41)
            if np.array_equal(canvas[0, y:y + 24, x:x + 24], crop)]
    assert hits, "a crop at scale 1 is no slice of the canvas"


def test_scaled_down_canvas_is_padded_gray_and_flips():
  canvas = np.full((1, 64, 64, 3), 200, np.uint8)
  crops = gpu_sweep.make_crops(size=64, batch=2, scale_range=(0.5, 0.5), hflip=False)
  out = np.round(np.asarray(crops(canvas, jax.random.PRNGKey(1))) * 255)
  assert np.all(out[:, 32, 32] == 200)  # the content, scaled to the canvas centre
  assert np.all(out[:, 0, 0] == 114) and np.all(out[:, 63, 63] == 114)  # letterbox gray
  ramp = np.repeat(np.repeat(np.arange(64, dtype=np.uint8)[None, None, :, None] * 3, 64, 1), 3, 3)
  flipped = gpu_sweep.make_crops(size=64, batch=8, scale_range=(1.0, 1.0), hflip=True)
  rows = np.round(np.asarray(flipped(ramp, jax.random.PRNGKey(2)))[:, 0, :, 0] * 255)
  assert {bool(r[0] > r[-1]) for r in rows} == {True, False}  # some flipped, some not


def test_feature_windows_cut_the_same_aligned_window_at_every_scale():
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(6, n, n, c)).astype(np.float32)
           for s, n, c in (("p3", 8, 3), ("p4", 4, 5), ("p5", 2, 7))}  # a 64-pixel canvas
  windows = jax.jit(gpu_sweep.make_windows(size=32, full=64))
  seen = set()
  for k in range(4):
    out = {s: np.asarray(a) for s, a in windows(feats, jax.random.PRNGKey(k)).items()}
    for i in range(6):
      assert out["p5"][i].shape == (1, 1, 7)
      (y, x), = [(y, x) for y in (0, 32) for x in (0, 32)
                 if np.array_equal(out["p3"][i], feats["p3"][i, y // 8:y // 8 + 4,
                                                              x // 8:x // 8 + 4])]
      seen.add((y, x))
      for s, st in (("p4", 16), ("p5", 32)):
        np.testing.assert_array_equal(out[s][i], feats[s][i, y // st:(y + 32) // st,
                                                              x // st:(x + 32) // st])
  assert len(seen) == 4


def test_split_and_join_restore_the_file(tmp_path):
  data = np.random.default_rng(0).integers(0, 256, 2500, np.uint8).tobytes()
  path = tmp_path / "hsc.hsz"
  path.write_bytes(data)
  parts = gpu_sweep.split_large(path, part_bytes=1000)
  assert [p.name for p in parts] == ["hsc.hsz.part0", "hsc.hsz.part1", "hsc.hsz.part2"]
  assert not path.exists() and max(p.stat().st_size for p in parts) == 1000
  assert gpu_sweep.join_parts(tmp_path) == [path] and path.read_bytes() == data


def test_bad_bundles_are_refused(tmp_path):
  with pytest.raises(gpu_sweep.BundleError, match="manifest.json is missing"):
    gpu_sweep.read_bundle(tmp_path)
  for name in (gpu_sweep.MANIFEST, gpu_sweep.IMAGES, gpu_sweep.DETECTOR):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / gpu_sweep.MANIFEST).write_text(json.dumps({"version": 99, "letterbox": 64}))
  with pytest.raises(gpu_sweep.BundleError, match="bundle version 99"):
    gpu_sweep.read_bundle(tmp_path)
  (tmp_path / gpu_sweep.MANIFEST).write_text(json.dumps({"version": 1, "letterbox": 64}))
  blob = np.frombuffer(gpu_sweep.pack_image(_photo(8, 8)), np.uint8)
  np.savez(tmp_path / gpu_sweep.IMAGES, data=blob, offsets=np.array([0, blob.size + 3]),
           shapes=np.array([[8, 8]]))
  with pytest.raises(gpu_sweep.BundleError, match="offsets disagree"):
    gpu_sweep.read_bundle(tmp_path)
  with pytest.raises(gpu_sweep.BundleError, match="holds no zoo files"):
    gpu_sweep.finish(tmp_path, install=False)
  with pytest.raises(gpu_sweep.BundleError, match="unknown methods"):
    gpu_sweep.pack(tmp_path / "other", ["base", "base_cross"])


def test_training_path_imports_nothing_the_gpu_machine_lacks():
  code = BLOCKER + textwrap.dedent("""
      from hssc_jax import train_lib, zoo
      from hssc_jax.codecs import registry
      from hssc_jax.detectors import factory, yolov5
      import hssc_jax.codecs.hssc_paper
      print(sorted(registry.CODECS))
      """)
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "hssc_paper" in r.stdout


@pytest.mark.slow
def test_pack_train_finish_end_to_end(tmp_path, shared):
  shared("data", "coco-mini", "train2017")
  shared("weights", "yolov5n-coco-v6.0.pt")
  bundle, out = tmp_path / "bundle", tmp_path / "out"
  gpu_sweep.pack(bundle, ["base", "mfiba", "base_per_scale", "mfiba_per_scale", "base_coarse",
                         "base_blocks"], limit=3)
  run = BLOCKER + textwrap.dedent(f"""
      import runpy
      sys.argv = ["gpu_sweep.py", "train", {str(bundle)!r}, {str(out)!r}, "--methods", "base",
                  "mfiba", "base_per_scale", "mfiba_per_scale", "base_coarse", "base_blocks",
                  "--max-steps", "3"]
      runpy.run_path({str(REPO / "scripts" / "gpu_sweep.py")!r}, run_name="__main__")
      """)
  r = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True,
                     env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mfiba: initialised" in r.stdout and "from the sweep's base\n" in r.stdout
  assert "from the sweep's base_per_scale" in r.stdout  # per-scale MFIBA from per-scale base
  assert gpu_sweep.finish(out, install=False) == ["base", "base_blocks", "base_coarse",
                                                  "base_per_scale", "mfiba", "mfiba_per_scale"]
  from hssc_jax import zoo
  codecs = {n: zoo.read_info(zoo.path_of(n, out))["codec"] for n in zoo.names(out)}
  assert codecs == {"base": "cross_scale", "mfiba": "mfiba_cross",
                    "base_per_scale": "hyperprior", "mfiba_per_scale": "mfiba",
                    "base_coarse": "cross_scale", "base_blocks": "cross_scale"}
  kwargs = {n: zoo.read_info(zoo.path_of(n, out))["codec_kwargs"] for n in codecs}
  assert kwargs["base_coarse"]["coarse_to_fine"] and "coarse_to_fine" not in kwargs["base"]
  assert list(kwargs["base_blocks"]["latent_blocks"]) == [0, 1, 1]
  info = zoo.read_info(zoo.path_of("mfiba", out))
  assert info["steps"] == 3 and info["codec_kwargs"]["allocation_models"]
  model = zoo.load("mfiba", 2, folder=out)  # a real bitstream through the range coder
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(0, 1, (1, 80 >> i, 80 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(info["scales"], info["channels"]))}
  back = model.decompress(model.compress(feats, image_size=(640, 640)))
  assert {s: v.shape for s, v in back.items()} == {s: v.shape for s, v in feats.items()}


def test_step_count_fits_the_share_and_drops_a_mixed_phase_its_compile_would_outlast():
  # 100 s left at 10 steps/s, compiles of 5 s: the mixed phase (15%, ~14 s) pays for its compile
  steps, mixed = gpu_sweep.fit_steps(21, 10.0, 100.0, 5.0, 0.15, 10**6)
  assert mixed and steps == 21 + int(10 * 95 * 0.95)
  # compiles of 40 s (as on the H200): 15% of 60 s is shorter than the compile, so no mixed phase
  steps, mixed = gpu_sweep.fit_steps(21, 10.0, 100.0, 40.0, 0.15, 10**6)
  assert not mixed and steps == 21 + int(10 * 100 * 0.95)
  assert gpu_sweep.fit_steps(21, 10.0, -3.0, 40.0, 0.15, 10**6) == (22, False)  # share spent
  assert gpu_sweep.fit_steps(21, 10.0, 100.0, 5.0, 0.0, 50) == (50, False)  # max_steps caps


def test_init_from_reads_a_zoo_file_and_refuses_another_codec_or_detector(tmp_path):
  import shutil
  from hssc_jax import zoo
  shutil.copy(zoo.path_of("base"), tmp_path)
  ident = zoo.read_info(zoo.path_of("base"))["detector"]
  assert gpu_sweep.read_init(tmp_path, "lmfc", "lmfc", ident) is None  # no file: not a fine-tune
  moved = dict(ident, weights="/elsewhere/w.pt")  # the same weights at another path
  info, params = gpu_sweep.read_init(tmp_path, "base", "cross_scale", moved)
  assert info["codec"] == "cross_scale" and info["steps"] > 0
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(params))
  with pytest.raises(gpu_sweep.BundleError, match="'cross_scale' codec"):
    gpu_sweep.read_init(tmp_path, "base", "mfiba", ident)
  with pytest.raises(gpu_sweep.BundleError, match="for detector"):
    gpu_sweep.read_init(tmp_path, "base", "cross_scale", dict(ident, weights_sha="0" * 16))
  path = zoo.path_of("base", tmp_path)
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(gpu_sweep.BundleError, match="--init-from.*truncated"):
    gpu_sweep.read_init(tmp_path, "base", "cross_scale", ident)
