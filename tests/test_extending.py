"""docs/extending.md runs: its learned codec trains, codes and decodes real bitstreams; its inner
codec serves the feature anchor and the image anchor."""

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax import train_lib
from hssc_jax.codecs import inner
from hssc_jax.codecs import registry
from hssc_jax.codecs.anchor import FeatureAnchor
from hssc_jax.codecs.image_anchor import ImageAnchor

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  """The page's files written into a folder on sys.path (the first line of each names it)."""
  folder = tmp_path_factory.mktemp("extending")
  blocks = re.findall(r"```python\n# file: (\S+)\n(.*?)```", DOC.read_text(), re.S)
  assert sorted(name for name, _ in blocks) == ["coarse_only.py", "coarse_only_config.py",
                                                "deflate_codec.py"]
  for name, code in blocks:
    (folder / name).write_text(code)
  sys.path.insert(0, str(folder))
  yield {name[:-3]: importlib.import_module(name[:-3]) for name, _ in blocks}
  sys.path.remove(str(folder))
  registry.CODECS.pop("coarse_only", None)
  inner.CODECS.pop("deflate", None)


def test_learned_codec_trains_and_codes(examples, tmp_path):
  config = examples["coarse_only_config"].get_config("smoke")
  with config.unlocked():
    config.steps, config.progress = 2, False
  metrics = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and metrics["bpp"] > 0
  codec, params, tables, run = train_lib.load_codec(tmp_path)
  assert run["codec"] == "coarse_only" and type(codec).__name__ == "CoarseOnlyCodec"
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(1, 24 >> i, 20 >> i, c)).astype(np.float32)
           for i, (s, c) in enumerate(zip(run["scales"], run["channels"]))}
  for header in ("full", "compact"):
    c = codec.clone(header=header)
    data = c.compress(params, tables, feats, (96, 80))
    out = c.decompress(params, tables, data)
    assert {s: v.shape for s, v in out.items()} == {s: v.shape for s, v in feats.items()}
    assert all(np.all(np.isfinite(v)) for v in out.values())
    with pytest.raises(errors.BitstreamError):
      c.decompress(params, tables, data[:-3])


def test_inner_codec_serves_both_anchors(examples):
  codec = inner.get("deflate")
  assert type(codec).__name__ == "Deflate"
  rng = np.random.default_rng(1)
  feats = {"p3": rng.normal(size=(1, 16, 16, 8)).astype(np.float32),
           "p4": rng.normal(size=(1, 8, 8, 16)).astype(np.float32)}
  anchor = FeatureAnchor((-4.0, 4.0), codec=codec)
  errs, sizes = [], []
  for qp in (0, 30):
    data = anchor.compress(feats, (64, 64), qp)
    out = anchor.decompress(data)
    errs.append(np.mean([np.mean((out[s] - np.clip(feats[s], -4, 4)) ** 2) for s in feats]))
    sizes.append(len(data))
  assert errs[0] < 1e-4 < errs[1] and sizes[1] < sizes[0]  # QP 0: 10 bits; QP 30: 5 bits
  image = rng.integers(0, 256, size=(21, 30, 3), dtype=np.uint8)
  ia = ImageAnchor(codec)
  np.testing.assert_array_equal(ia.decompress(ia.compress(image, 0)), image)
  with pytest.raises(errors.BitstreamError):
    anchor.decompress(data[:-5])
  with pytest.raises(errors.ConfigError, match="whose name is"):
    inner.register("other")(type(codec))
