"""Bootstrap over images: a draw re-accumulates the per-image matches, which must give what
pycocotools gives on a dataset that really holds the drawn images (duplicates as new images)."""

import json

import numpy as np
import pytest

from hssc_jax import codec_eval
from hssc_jax.errors import InvalidInputError
from hssc_jax.metrics import bootstrap
from hssc_jax.metrics import coco


def _dataset(rng, num_images=5):
  images, anns, results = [], [], []
  for i in range(1, num_images + 1):
    images.append(dict(id=i, file_name=f"{i}.png", height=100, width=120))
    for _ in range(rng.integers(1, 5)):
      x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 50), rng.uniform(8, 50), rng.uniform(8, 40)
      cat = int(rng.integers(1, 4))
      anns.append(dict(id=len(anns) + 1, image_id=i, category_id=cat, bbox=[x, y, w, h],
                       area=w * h, iscrowd=0))
      if rng.uniform() < 0.8:  # found, a little off, sometimes under another class
        jitter = rng.normal(0, 3, 4)
        results.append(dict(image_id=i, category_id=cat if rng.uniform() < 0.85 else 3,
                            bbox=[x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                            score=float(rng.uniform(0.2, 1))))
    for _ in range(rng.integers(0, 4)):  # false positives
      results.append(dict(image_id=i, category_id=int(rng.integers(1, 4)),
                          bbox=[float(v) for v in rng.uniform(0, 60, 4)], score=float(rng.uniform(0, 0.6))))
  gt = dict(images=images, annotations=anns,
            categories=[dict(id=c, name=f"c{c}") for c in (1, 2, 3)])
  return gt, results


def _record(results, ids, bits):
  return dict(image_ids=list(ids), bits=list(bits), pixels=[12000.0] * len(ids), results=results)


def _as_images(gt, results, draw):
  """The draw as a real dataset: every drawn image a new image with its boxes and detections."""
  images, anns, dets = [], [], []
  for new, old in enumerate(draw, start=1):
    images.append(dict(next(im for im in gt["images"] if im["id"] == old), id=new))
    anns += [dict(a, id=len(anns) + k + 1, image_id=new)
             for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
    dets += [dict(r, image_id=new) for r in results if r["image_id"] == old]
  return dict(gt, images=images, annotations=anns), dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_draw_scores_as_the_dataset_that_holds_its_images(tmp_path, seed):
  rng = np.random.default_rng(seed)
  gt, results = _dataset(rng)
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  bits = [float(b) for b in rng.integers(500, 5000, 5)]
  scores = bootstrap.PointScores.of(path, _record(results, range(1, 6), bits))

  bpp, mAP = scores.score([1, 2, 3, 4, 5])
  assert mAP == pytest.approx(coco.coco_evaluate(path, results)["mAP"], abs=1e-12)
  assert bpp == pytest.approx(sum(bits) / 60000)
  for draw in ([3, 3, 1, 5, 5], [2, 4, 4, 4, 1], [5, 1, 2, 2, 3]):
    real_gt, real_dets = _as_images(gt, results, draw)
    real = tmp_path / "drawn.json"
    real.write_text(json.dumps(real_gt))
    bpp, mAP = scores.score(draw)
    assert mAP == pytest.approx(coco.coco_evaluate(real, real_dets)["mAP"], abs=1e-12)
    assert bpp == pytest.approx(sum(bits[i - 1] for i in draw) / (12000 * len(draw)))
  assert scores.score([4, 2, 2]) == scores.score([2, 4, 2])  # order does not matter


def _four_points():
  """A dataset of six images, its detections, and four operating points on it, {label:
  (detections kept, bits)}, whose mAP rises with the bits (so BD-rates against them exist)."""
  rng = np.random.default_rng(3)
  gt, results = _dataset(rng, num_images=6)
  points = {}
  for q, keep in enumerate((0.9, 0.7, 0.5, 0.3)):
    kept = [r for r in results if r["score"] >= keep]
    bits = [float(b) for b in rng.integers(100, 1000, 6) * (q + 1)]
    points[f"q{q}"] = (kept, bits)
  return gt, results, points


def test_bd_rate_draws_and_bad_input(tmp_path):
  gt, results, points = _four_points()
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  ids = list(range(1, 7))
  # Four operating points of an "anchor"; the other method gets the same detections at half the
  # bits of each, so its BD-rate is -50% on every draw.
  scores = {m: {q: bootstrap.PointScores.of(path, _record(k, ids, [b * f for b in bits]))
                for q, (k, bits) in points.items()} for m, f in (("anchor", 1.0), ("half", 0.5))}
  assert bootstrap.bd_rates(scores, "anchor", ids)["half"] == pytest.approx(-50, abs=1e-6)
  draws = bootstrap.bootstrap_bd(scores, "anchor", ids, samples=5, seed=1)
  finite = draws["half"][np.isfinite(draws["half"])]
  assert finite.size and np.allclose(finite, -50, atol=1e-6)
  row = bootstrap.summarize(draws, threshold=-40)[0]
  assert row["method"] == "half" and row["at_or_below"] == 1.0

  with pytest.raises(InvalidInputError, match="was not coded"):
    scores["anchor"]["q0"].score([1, 99])
  with pytest.raises(InvalidInputError, match="same length"):
    bootstrap.PointScores.of(path, dict(_record(results, ids, [1.0] * 6), bits=[1.0]))
  with pytest.raises(InvalidInputError, match="not in the ground truth"):
    bootstrap.PointScores.of(path, _record(results, [1, 2, 77], [1.0] * 3))
  with pytest.raises(InvalidInputError, match="samples"):
    bootstrap.bootstrap_bd(scores, "anchor", ids, samples=0)
  with pytest.raises(InvalidInputError, match="no points"):
    bootstrap.bd_rates(scores, "missing", ids)


def _workdir(path, root, split, methods):
  """An eval.py codecs workdir: {method: {point: record}} with its per-image records."""
  rows = []
  for method, points in methods.items():
    for label, record in points.items():
      point = codec_eval.point_path(path, method, label)
      point.parent.mkdir(parents=True, exist_ok=True)
      codec_eval.detections_path(point).write_text(json.dumps(dict(record, source=None)))
      rows.append(dict(method=method, point=label, source=None))
  (path / "results.json").write_text(json.dumps(dict(points=rows)))
  num = len(next(iter(next(iter(methods.values())).values()))["image_ids"])
  (path / "uncompressed.json").write_text(json.dumps(dict(dataset=str(root), split=split,
                                                          num_images=num)))
  return path


def test_the_script_compares_two_versions_of_a_model_on_the_same_draws(tmp_path, capsys,
                                                                      load_script):
  """`scripts/bootstrap_bd.py --versus`: another workdir's points join as "<method> (versus)",
  so one model is compared with its earlier version image draw by image draw; workdirs of other
  images are refused."""
  module = load_script("bootstrap_bd")
  gt, _, points = _four_points()
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  (root / "annotations" / "instances_val.json").write_text(json.dumps(gt))
  ids = list(range(1, 7))
  version = lambda f: {q: _record(k, ids, [b * f for b in bits]) for q, (k, bits) in points.items()}
  new = _workdir(tmp_path / "new", root, "val", {"m": version(0.5)})
  old = _workdir(tmp_path / "old", root, "val", {"m": version(1.0)})
  module.main(["--workdir", str(new), "--versus", str(old), "--anchor", "m (versus)",
               "--samples", "5", "--threshold", "0"])
  row = next(l.split() for l in capsys.readouterr().out.splitlines() if l.startswith("m "))
  assert float(row[1]) == pytest.approx(-50, abs=1e-3) and float(row[-2]) == 1.0

  other = _workdir(tmp_path / "other", root, "val", {"m": {q: _record(k, ids[:5], b[:5])
                                                          for q, (k, b) in points.items()}})
  with pytest.raises(SystemExit, match="same images"):
    module.main(["--workdir", str(new), "--versus", str(other), "--anchor", "m (versus)"])
