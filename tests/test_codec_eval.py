"""eval.py "codecs" mode end to end on a generated set, and the BD-rate / report helpers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from hssc_jax import codec_eval
from hssc_jax import errors
from hssc_jax.metrics import coco
from hssc_jax.metrics import rd

REPO = Path(__file__).resolve().parents[1]


def _linear_bd(anchor, test):
  """BD-rate (%) and BD-mAP of two 2-point curves, where pchip is the straight line: closed form.

  anchor/test: ((bpp0, bpp1), (map0, map1)) with mAP in points (x100).
  """
  def line(xs, ys):
    (x0, x1), (y0, y1) = xs, ys
    slope = (y1 - y0) / (x1 - x0)
    return lambda a, b: (y0 * (b - a) + slope * ((b - x0) ** 2 - (a - x0) ** 2) / 2)

  (ra, ma), (rt, mt) = anchor, test
  lra, lrt = np.log10(ra), np.log10(rt)
  lo, hi = max(min(ma), min(mt)), min(max(ma), max(mt))  # mAP overlap: log-rate as f(mAP)
  order_a, order_t = np.argsort(ma), np.argsort(mt)
  fa = line(np.asarray(ma)[order_a], lra[order_a])
  ft = line(np.asarray(mt)[order_t], lrt[order_t])
  bd_rate = (10 ** ((ft(lo, hi) - fa(lo, hi)) / (hi - lo)) - 1) * 100 if hi > lo else math.nan
  lo, hi = max(min(lra), min(lrt)), min(max(lra), max(lrt))  # log-rate overlap: mAP as f(rate)
  ga = line(np.sort(lra), np.asarray(ma)[np.argsort(lra)])
  gt = line(np.sort(lrt), np.asarray(mt)[np.argsort(lrt)])
  bd_map = (gt(lo, hi) - ga(lo, hi)) / (hi - lo) if hi > lo else math.nan
  return bd_rate, bd_map


def test_bd_metrics_known_answers():
  rate = np.array([0.1, 0.2, 0.4, 0.8])
  acc = np.array([20.0, 26.0, 30.0, 32.0])
  half = rd.bd_metrics((rate, acc), (rate / 2, acc))
  assert half["bd_rate"] == pytest.approx(-50.0, abs=1e-9)
  assert rd.bd_metrics((rate, acc), (rate, acc + 1.0))["bd_map"] == pytest.approx(1.0, abs=1e-9)
  same = rd.bd_metrics((rate, acc), (rate, acc))
  assert same["bd_rate"] == pytest.approx(0.0, abs=1e-9) and same["bd_map"] == pytest.approx(0.0)
  # Two-point curves: pchip is a line, so the closed form must agree.
  a, t = ((0.1, 0.5), (10.0, 30.0)), ((0.08, 0.3), (12.0, 28.0))
  got = rd.bd_metrics((np.array(a[0]), np.array(a[1])), (np.array(t[0]), np.array(t[1])))
  want = _linear_bd(a, t)
  assert got["bd_rate"] == pytest.approx(want[0], rel=1e-9)
  assert got["bd_map"] == pytest.approx(want[1], rel=1e-9)
  one = rd.bd_metrics((rate, acc), (rate[:1], acc[:1]))
  assert math.isnan(one["bd_rate"]) and "at least 2" in one["note"]


def test_anchor_rate_at_interpolates_in_log_rate():
  rows = [dict(method="a", bpp=b, mAP=m) for b, m in ((0.1, 0.2), (1.0, 0.3))]
  assert rd.anchor_rate_at(rows, "a", 0.25) == pytest.approx(10 ** -0.5, rel=1e-9)
  assert math.isnan(rd.anchor_rate_at(rows, "a", 0.5))  # outside the anchor's range


def test_bad_method_entries_raise_config_errors(tmp_path):
  def cfg(methods):
    return ml_collections.ConfigDict({"methods": methods})
  with pytest.raises(errors.ConfigError, match="kind"):
    codec_eval.points_of(cfg([{"name": "x", "kind": "jpeg", "qps": [1]}]))
  with pytest.raises(errors.ConfigError, match="no qps"):
    codec_eval.points_of(cfg([{"name": "x", "kind": "feature_anchor"}]))
  with pytest.raises(errors.ConfigError, match="run.json"):
    codec_eval.points_of(cfg([{"name": "x", "kind": "learned", "workdirs": [str(tmp_path)]}]))
  with pytest.raises(errors.ConfigError, match="unknown keys"):
    codec_eval.points_of(cfg([{"name": "x", "kind": "image_anchor", "qps": [30], "qp": 3}]))
  with pytest.raises(errors.ConfigError, match="unknown inner codec"):
    codec_eval.points_of(cfg([{"name": "x", "kind": "image_anchor", "qps": [30], "inner": "x"}]))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  """A tiny generated set and one base-codec run on the shipped ShapesNet (one training: each run
  costs a full compile; the anchors give the BD table its two-point curves)."""
  from hssc_jax import demo
  from hssc_jax import train_lib
  root = tmp_path_factory.mktemp("demo")
  demo.make_data(root / "data", train_images=8, val_images=8)
  config = demo.train_config("base", 256.0, steps=4, root=root)
  with config.unlocked():
    config.data.cache_variants = 2
    config.loss.mixed_fraction = 0.0  # one train-step compile; tests/test_train_lib.py covers it
  train_lib.train_and_evaluate(config, str(root / "runs" / "base_l256"))
  return root


def test_eval_py_end_to_end(demo_root):
  work = demo_root / "eval"
  cmd = [sys.executable, str(REPO / "eval.py"),
         f"--config={REPO / 'configs/eval/demo.py'}:root={demo_root},methods=base,"
         "lambdas=256,smoke", f"--workdir={work}", "--config.progress=False"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  rows = rd.read_csv(work / "results.csv")
  methods = [r["method"] for r in rows]
  assert methods.count("feature anchor (HEVC)") == 2 and methods.count("image anchor (HEVC)") == 2
  assert methods.count("base") == 1
  for r in rows:
    assert r["bpp"] > 0 and 0 <= r["mAP"] <= 1 and 0 <= r["AP50"] <= 1 and r["num_images"] == "8"
    assert r["encode_ms"] > 0 and r["decode_ms"] > 0
  fa = sorted((int(r["point"][2:]), r["bpp"]) for r in rows if r["method"].startswith("feature"))
  assert fa[0][1] > fa[1][1]  # a higher QP spends fewer bits
  for r in rows:
    if r["method"] == "base":
      assert float(r["mse_p3"]) >= 0 and float(r["psnr_p5"]) > 0

  png = (work / "rd.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

  # The BD table, recomputed here from the CSV alone (2 points: pchip is a line).
  report = json.loads((work / "results.json").read_text())
  assert report["anchor_method"] == "feature anchor (HEVC)"
  curves = {}
  for r in rows:
    curves.setdefault(r["method"], []).append((r["bpp"], 100 * r["mAP"]))
  anchor = tuple(zip(*sorted(curves["feature anchor (HEVC)"])))
  primary = [b for b in report["bd"] if b["anchor"] == "feature anchor (HEVC)"]
  assert {b["method"] for b in primary} == {"image anchor (HEVC)", "base"}
  # The demo config also compares against the image anchor and the base codec.
  assert {b["anchor"] for b in report["bd"]} == {"feature anchor (HEVC)", "image anchor (HEVC)",
                                                  "base"}
  for entry in primary:
    test = tuple(zip(*sorted(curves[entry["method"]])))
    degenerate = len(set(test[1])) < 2 or len(set(anchor[1])) < 2
    want = _linear_bd(anchor, test) if not degenerate else (math.nan, math.nan)
    for got, exp in zip((entry["bd_rate"], entry["bd_map"]), want):
      if math.isnan(exp):
        assert math.isnan(got)
      else:
        assert got == pytest.approx(exp, rel=1e-6, abs=1e-9)
    # ... and printed as a table.
    line = next(l for l in proc.stdout.splitlines() if l.startswith(entry["method"] + " ")
                and "feature anchor (HEVC)" in l)
    assert f"{entry['bd_rate']:.2f}" in line or (math.isnan(entry["bd_rate"]) and "nan" in line)

  # Beside each point its per-image record (metrics.bootstrap): bits and detections that give
  # the point's bpp and mAP again.
  points = sorted(p for p in (work / "points").rglob("*.json") if ".detections" not in p.name)
  assert len(points) == len(rows)
  gt = coco.load_ground_truth(next(demo_root.glob("data/annotations/instances_val*.json")))
  for path in points:
    row, record = (json.loads(p.read_text()) for p in (path, codec_eval.detections_path(path)))
    assert record["source"] == row["source"] and len(record["image_ids"]) == 8
    assert sum(record["bits"]) / sum(record["pixels"]) == pytest.approx(row["bpp"], rel=1e-12)
    assert coco.coco_evaluate(gt, record["results"], image_ids=record["image_ids"])["mAP"] == \
        pytest.approx(row["mAP"], abs=1e-12)

  # Resumable: a second run recomputes nothing (point files untouched) and gives the same table.
  stamps = {p: p.stat().st_mtime_ns for p in (work / "points").rglob("*.json")}
  proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc2.returncode == 0, proc2.stderr[-3000:]
  assert {p: p.stat().st_mtime_ns for p in (work / "points").rglob("*.json")} == stamps
  assert json.loads((work / "results.json").read_text())["bd"] == report["bd"]

  # A point whose recorded source is not the model's any more is measured again, and only it.
  stale = [p for p in points if p.parent.name == "base"][0]
  row = json.loads(stale.read_text())
  row["source"], row["mAP"] = "step -1", -1.0
  stale.write_text(json.dumps(row))
  stamps = {p: p.stat().st_mtime_ns for p in (work / "points").rglob("*.json")}
  proc3 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc3.returncode == 0, proc3.stderr[-3000:]
  assert f"{stale}" in proc3.stdout and "measuring again" in proc3.stdout
  now = {p: p.stat().st_mtime_ns for p in (work / "points").rglob("*.json")}
  assert [p for p in now if now[p] != stamps[p]] == sorted([stale, codec_eval.detections_path(stale)])
  again = json.loads(stale.read_text())
  assert again["source"] != "step -1" and again["mAP"] == pytest.approx(
      next(r["mAP"] for r in rows if r["method"] == "base" and r["point"] == again["point"]))


def test_finished_points_are_bound_to_the_model_they_measured(tmp_path):
  """A rerun reuses a point only while its source is unchanged: a zoo model's fingerprint at that
  quality, a workdir's latest checkpoint; anchors are fixed."""
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  Point = codec_eval.Point
  fingerprints = zoo.read_info(zoo.path_of("base"))["fingerprints"]
  got = [codec_eval.source_of(Point("base", "zoo", f"q{q}", model="base", quality=q))
         for q in (0, 1)]
  assert got == fingerprints[:2] and got[0] != got[1]
  (tmp_path / "tables").mkdir()
  learned = Point("x", "learned", "w", workdir=str(tmp_path))
  for step in (250, 1000):
    np.savez(tmp_path / "tables" / f"{step}.npz")
  assert codec_eval.source_of(learned) == "step 1000"
  np.savez(tmp_path / "tables" / "1250.npz")
  assert codec_eval.source_of(learned) == "step 1250"
  assert codec_eval.source_of(Point("a", "feature_anchor", "qp22", qp=22)) is None
  # Encoder-only settings (MFIBA's allocation exponent and budget scale) keep the fingerprint but
  # change the points, so they are part of the source.
  zoo.resave(zoo.path_of("mfiba"), tmp_path / "zoo", "mfiba_half", encode_exponent=0.75,
             budget_scale=0.25)
  shipped, half = (codec_eval.source_of(Point(n, "zoo", "q2", model=n, quality=2, folder=f))
                   for n, f in (("mfiba", ""), ("mfiba_half", str(tmp_path / "zoo"))))
  assert half.split()[0] == shipped.split()[0] and half != shipped
  assert half.endswith('{"budget_scale": 0.25, "encode_exponent": 0.75}')


def test_split_features_hold_every_image_once(demo_root):
  """`detector_eval.split_features`: one pyramid per batch, padding rows dropped, every image of the
  split once, each equal to part 1 of that image coded alone."""
  from configs.eval import demo  # pylint: disable=g-import-not-at-top
  from hssc_jax import detector_eval  # pylint: disable=g-import-not-at-top
  from hssc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = demo.get_config(f"root={demo_root},methods=base,lambdas=256,smoke")
  feats, det, det_vars = detector_eval.split_features(config)
  sizes = [len(f[det.feature_names[0]]) for f in feats]
  assert sum(sizes) == 8 and all(sorted(f) == sorted(det.feature_names) for f in feats)
  first = next(iter(pipeline.eval_data_of(config)))["images"][:1]
  x, _ = det.preprocess(list(first))
  alone = det.part1(det_vars, x)
  for s in det.feature_names:
    np.testing.assert_allclose(feats[0][s][:1], np.asarray(alone[s]), rtol=1e-4, atol=1e-4)
