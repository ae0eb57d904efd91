"""Rate-accuracy evaluation of feature codecs and anchors from real bitstreams (eval.py "codecs").

```
for each operating point (a trained codec workdir, a feature-anchor QP, an image-anchor QP):
  image --preprocess--> x --part1 (jit)--> pyramid --compress--> bytes --decompress--> pyramid_hat
        --part2 (jit)--> detections          (image anchor: image --inner codec--> decoded image
                                              --whole detector--> detections)
  -> mAP@[.5:.95], AP50 (pycocotools), bpp = sum of 8 x len(bytes) / sum of H x W of the original
     images (the reference anchors' convention; the mean of per-image bpp is kept too),
     feature MSE and PSNR per scale, encode / decode ms per image
then: results.csv (MPEG-style table), results.json, rd.png, BD-rate / BD-mAP against the anchor
```

Rates are always the length of the real bitstream (container header included), never an estimate.
Each finished point is saved as `points/<method>/<label>.json`; a rerun skips them (resumable).
Feature PSNR of scale s: 10 log10(peak^2 / MSE) with peak = max - min of that image's original
feature map (as CompressAI-Vision's feature PSNR); MSE and PSNR are averaged over images.
Times exclude compilation (the first image of a point is coded once untimed as a warm-up) and are
host wall-clock per image: learned codecs include their analysis/synthesis networks.
"""

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import anchor as anchor_lib
from hssc_jax.codecs import coders
from hssc_jax.codecs import inner
from hssc_jax.data import pipeline
from hssc_jax.metrics import coco
from hssc_jax.metrics import rd

KINDS = ("learned", "zoo", "feature_anchor", "image_anchor")


@dataclasses.dataclass(frozen=True)
class Point:
  method: str
  kind: str
  label: str
  workdir: str = ""
  qp: int = 0
  inner: str = "hevc"
  model: str = ""  # zoo model name (kind "zoo")
  quality: int = 0
  folder: str = ""  # zoo folder (kind "zoo"; "" = the shipped zoo)


def _slug(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def points_of(config: ml_collections.ConfigDict) -> list[Point]:
  """The operating points of `config.methods`; ConfigError for a malformed entry."""
  out = []
  for i, m in enumerate(config.methods):
    m = dict(m)
    name, kind = m.get("name"), m.get("kind")
    if not name or kind not in KINDS:
      raise errors.ConfigError(f"methods[{i}] needs a name and a kind in {KINDS}, got {m}")
    unknown = set(m) - {"name", "kind", "workdirs", "qps", "inner", "model", "qualities", "folder"}
    if unknown:
      raise errors.ConfigError(f"methods[{i}] ({name}) has unknown keys {sorted(unknown)}")
    if kind == "learned":
      workdirs = list(m.get("workdirs") or [])
      if not workdirs:
        raise errors.ConfigError(f"methods[{i}] ({name}) lists no workdirs")
      for w in workdirs:
        if not (Path(w) / "run.json").exists():
          raise errors.ConfigError(f"methods[{i}] ({name}): {w} holds no trained codec "
                                   "(run.json missing); train it with train.py first")
      out += [Point(name, kind, Path(w).name, workdir=str(w)) for w in workdirs]
    elif kind == "zoo":
      from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
      model, folder = m.get("model") or name, m.get("folder") or ""
      if model not in zoo.names(folder or None):
        raise errors.ConfigError(f"methods[{i}] ({name}): no zoo model {model!r}; the zoo has "
                                 f"{zoo.names(folder or None)}")
      qualities = [int(q) for q in (m.get("qualities") or [])]
      if not qualities:
        raise errors.ConfigError(f"methods[{i}] ({name}) lists no qualities")
      out += [Point(name, kind, f"q{q}", model=model, quality=q, folder=folder)
              for q in qualities]
    else:
      qps = [int(q) for q in (m.get("qps") or [])]
      if not qps:
        raise errors.ConfigError(f"methods[{i}] ({name}) lists no qps")
      codec = m.get("inner", "hevc")
      inner.get(codec)  # ConfigError when unknown
      out += [Point(name, kind, f"qp{q}", qp=q, inner=codec) for q in qps]
  labels = [(p.method, p.label) for p in out]
  if len(set(labels)) != len(labels):
    raise errors.ConfigError("two operating points share a method and label")
  return out


def source_of(point: Point) -> str | None:
  """What a finished point was measured with, so a rerun measures again after the model changed:
  a zoo model's fingerprint at that quality, a workdir's latest checkpoint step; None (fixed) for
  the anchors."""
  if point.kind == "zoo":
    from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
    from hssc_jax.codecs import registry  # pylint: disable=g-import-not-at-top
    info = zoo.read_info(zoo.path_of(point.model, point.folder or None))
    fingerprints = info.get("fingerprints") or []
    if point.quality >= len(fingerprints):
      return None
    # Encoder-only settings change the points but not the fingerprint.
    kwargs = info.get("codec_kwargs") or {}
    extra = {k: kwargs[k] for k in registry.codec_class(info["codec"]).encoder_only
             if kwargs.get(k) is not None}
    return fingerprints[point.quality] + (f" {json.dumps(extra, sort_keys=True)}" if extra else "")
  if point.kind == "learned":
    from hssc_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
    return f"step {checkpoints.latest_tables_step(point.workdir)}"
  return None


def make_coder(point: Point, config: ml_collections.ConfigDict, detector, det_vars,
               workdir: Path) -> coders.Coder:
  """The coder of one operating point (learned codecs checked against the detector's pyramid)."""
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  scales = list(detector.feature_names)
  if point.kind == "learned":
    from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
    codec, params, tables, run = train_lib.load_codec(point.workdir)
    if list(run["scales"]) != scales:
      raise errors.ConfigError(f"{point.workdir} codes scales {run['scales']}, the detector "
                               f"gives {scales}")
    return coders.LearnedCoder(codec, params, tables)
  if point.kind == "zoo":
    from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
    model = zoo.load(point.model, point.quality, point.folder or None)
    zoo.check_detector(model, scales, factory.feature_channels(detector, det_vars))
    return model
  if point.kind == "feature_anchor":
    return coders.FeatureAnchorCoder(feature_anchor(config, point.inner, detector, det_vars,
                                                    workdir), point.qp)
  from hssc_jax.codecs.image_anchor import ImageAnchor  # pylint: disable=g-import-not-at-top
  return coders.ImageAnchorCoder(ImageAnchor(inner.get(point.inner)), point.qp)


def feature_anchor(config: ml_collections.ConfigDict, codec_name: str, detector, det_vars,
                   workdir: Path) -> anchor_lib.FeatureAnchor:
  """The feature anchor with its 10-bit range: `config.feature_anchor.value_range` when given,
  else one global min/max over the part-1 features of `fit_sources` (training images, as the MPEG
  anchor does), saved in the workdir and reused."""
  fa = config.feature_anchor
  kw = dict(codec=inner.get(codec_name), reorder=fa.get("reorder", "none"))
  if fa.get("value_range"):
    return anchor_lib.FeatureAnchor(tuple(fa.value_range), **kw)
  sources = [dict(s) for s in fa.fit_sources]
  if not sources:
    raise errors.ConfigError("feature_anchor needs a value_range or at least one fit source")
  key = bitstream.fingerprint(json.dumps(sources, sort_keys=True)).hex()[:12]
  path = workdir / f"feature_anchor_range_{key}.json"
  if path.exists():
    return anchor_lib.FeatureAnchor(tuple(json.loads(path.read_text())["value_range"]), **kw)
  part1 = jax.jit(detector.part1)
  lo, hi, count = math.inf, -math.inf, 0
  for src in sources:
    data = pipeline.eval_data(src["root"], src["split"], batch_size=config.batch_size,
                              data_dir=config.data.get("data_dir"), shard_index=0, num_shards=1)
    for batch in data:
      x, _ = detector.preprocess(list(batch["images"]))
      for a in part1(det_vars, x).values():
        lo, hi = min(lo, float(np.min(a))), max(hi, float(np.max(a)))
    count += data.num_images
  path.write_text(json.dumps({"value_range": [lo, hi], "images": count, "sources": sources}))
  print(f"feature anchor range ({lo:.5f}, {hi:.5f}) fitted on {count} images of {sources}")
  return anchor_lib.FeatureAnchor((lo, hi), **kw)


def _pad_batch(items: list, size: int) -> list:
  return items + [items[-1]] * (size - len(items))


def _psnr(ref: np.ndarray, mse: float) -> float:
  peak = float(ref.max() - ref.min())
  if mse <= 0:
    return math.inf
  return 10.0 * math.log10(max(peak, 1e-12) ** 2 / mse)


class _Timed:
  """Codes images one by one through a coder: bits, pixels, ms and stream bits per image (the
  first image is coded once untimed: compilation is not timed)."""

  def __init__(self, coder: coders.Coder):
    self.coder, self.warm = coder, False
    self.bits, self.pixels, self.enc, self.dec = [], [], [], []
    self.stream_bits: dict[str, list[float]] = {}

  def __call__(self, x: Any, size: Sequence[int]) -> tuple[Any, bytes]:
    if not self.warm:
      self.coder.decompress(self.coder.compress(x, size))
      self.warm = True
    t0 = time.perf_counter()
    blob = self.coder.compress(x, size)
    t1 = time.perf_counter()
    x_hat = self.coder.decompress(blob)
    self.enc.append(t1 - t0)
    self.dec.append(time.perf_counter() - t1)
    self.bits.append(8 * len(blob))
    self.pixels.append(float(size[0] * size[1]))
    for k, b in self.coder.stream_bits(blob).items():
      self.stream_bits.setdefault(k, []).append(b)
    return x_hat, blob


DETECTIONS = "detections"  # evaluate_point's per-image record, written beside the point's json


def point_path(workdir: str | os.PathLike, method: str, label: str) -> Path:
  """The json of one measured point in an evaluation workdir."""
  return Path(workdir) / "points" / _slug(method) / f"{_slug(label)}.json"


def detections_path(point_json: Path) -> Path:
  """Where a point's per-image record is kept: its image ids in coding order, bits and original
  pixels per image, and its COCO results (what `metrics.bootstrap` resamples)."""
  return point_json.with_name(point_json.stem + ".detections.json")


def evaluate_point(point: Point, coder: coders.Coder, detector, det_vars,
                   data: pipeline.EvalData, progress: bool = True) -> dict[str, Any]:
  """Codes every image of `data` through `coder`; returns the point's metrics and detections."""
  detect = jax.jit(detector.detect)
  part1 = jax.jit(detector.part1)
  part2 = jax.jit(detector.part2)
  cat_ids = list(detector.coco_category_ids)
  timed = _Timed(coder)
  results, ids_all, allocations = [], [], []
  mse = {s: [] for s in detector.feature_names}
  psnr = {s: [] for s in detector.feature_names}
  for batch in tqdm.tqdm(data, total=len(data), disable=not progress, unit="batch",
                         desc=f"{point.method} {point.label}"):
    images, n = list(batch["images"]), len(batch["images"])
    ids = [int(i) for i in batch["ids"]]
    sizes = [tuple(int(v) for v in batch["sizes"][i]) for i in range(n)]
    if coder.input == "image":
      decoded = [timed(img, size)[0] for img, size in zip(images, sizes)]
      x, meta = detector.preprocess(_pad_batch(decoded, data.batch_size))
      dets = detect(det_vars, x, meta)
    else:
      x, meta = detector.preprocess(_pad_batch(images, data.batch_size))
      feats = {s: np.asarray(a) for s, a in part1(det_vars, x).items()}
      hats = {s: np.array(a) for s, a in feats.items()}
      for i in range(n):
        f_i = {s: a[i:i + 1] for s, a in feats.items()}
        f_hat, blob = timed(f_i, sizes[i])
        chosen = coder.allocation(blob)
        if chosen is not None:
          allocations.append({"image_id": ids[i], **chosen})
        for s in feats:
          h = np.asarray(f_hat[s], np.float32).reshape(f_i[s].shape)
          hats[s][i] = h[0]
          m = float(np.mean(np.square(h - f_i[s])))
          mse[s].append(m)
          psnr[s].append(_psnr(f_i[s], m))
      dets = part2(det_vars, hats, meta)
    results += coco.detections_to_coco(ids, dets.per_image()[:n], cat_ids)
    ids_all += ids
  metrics = coco.coco_evaluate(data.annotation_path, results, image_ids=ids_all)
  bits, pixels = np.asarray(timed.bits), np.asarray(timed.pixels)
  out = dict(method=point.method, point=point.label, kind=point.kind, workdir=point.workdir,
             qp=point.qp, inner=point.inner if "anchor" in point.kind else "",
             model=point.model, quality=point.quality,
             bpp=float(np.sum(bits) / np.sum(pixels)),
             mean_image_bpp=float(np.mean(bits / pixels)),
             bytes_per_image=float(np.mean(bits)) / 8, mAP=metrics["mAP"], AP50=metrics["AP50"],
             AP75=metrics["AP75"], encode_ms=1e3 * float(np.mean(timed.enc)),
             decode_ms=1e3 * float(np.mean(timed.dec)), num_images=len(ids_all), coco=metrics)
  if coder.input != "image":
    for s in mse:
      out[f"mse_{s}"] = float(np.mean(mse[s]))
      out[f"psnr_{s}"] = float(np.mean(psnr[s]))
    out["mse"] = float(np.mean([out[f"mse_{s}"] for s in mse]))
    out["stream_bpp"] = {k: float(np.sum(v) / np.sum(pixels))
                         for k, v in timed.stream_bits.items()}
    out["header_bpp"] = out["bpp"] - sum(out["stream_bpp"].values())
  if allocations:
    out["allocations"] = allocations
  out[DETECTIONS] = dict(image_ids=ids_all, bits=[float(b) for b in bits],
                         pixels=[float(p) for p in pixels], results=results)
  return out


def evaluate_codecs(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                    ) -> dict[str, Any]:
  """Runs every operating point of `config` (skipping finished ones) and writes the reports."""
  from hssc_jax import detector_eval  # pylint: disable=g-import-not-at-top
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  points = points_of(config)
  detector, det_vars = detector_eval.build_detector(config)
  data = pipeline.eval_data_of(config)
  progress = config.get("progress", True)

  ref_path = workdir / "uncompressed.json"
  if ref_path.exists():
    reference = json.loads(ref_path.read_text())
  else:
    reference = detector_eval.evaluate_detector(config, workdir / "uncompressed",
                                                detector=detector, params=det_vars)
    ref_path.write_text(json.dumps(reference))

  rows = []
  for p in points:
    path = point_path(workdir, p.method, p.label)
    source = source_of(p)
    if path.exists():
      row = json.loads(path.read_text())
      if row.get("source") == source:
        rows.append(row)
        continue
      print(f"{p.method} {p.label}: the model changed since {path} was written; measuring again")
    coder = make_coder(p, config, detector, det_vars, workdir)
    row = evaluate_point(p, coder, detector, det_vars, data, progress)
    row["source"] = source
    path.parent.mkdir(parents=True, exist_ok=True)
    detections_path(path).write_text(json.dumps(dict(row.pop(DETECTIONS), source=source)))
    path.write_text(json.dumps(row, indent=1))
    print(f"{p.method:<24} {p.label:<18} bpp {row['bpp']:.4f}  mAP {row['mAP']:.4f}  "
          f"AP50 {row['AP50']:.4f}  enc {row['encode_ms']:.1f} ms  dec {row['decode_ms']:.1f} ms",
          flush=True)
    rows.append(row)
  return write_reports(config, workdir, rows, reference)


def format_allocations(allocations: Sequence[dict], max_rows: int = 6) -> str:
  """Summary (mean / min / max gain per scale) and the first images of a bit-allocation point."""
  scales = [k for k in allocations[0] if k != "image_id"]
  gains = {s: np.array([a[s]["gain"] for a in allocations]) for s in scales}
  lines = ["  " + "  ".join(f"{s}: mean {g.mean():.3f} min {g.min():.3f} max {g.max():.3f}"
                            for s, g in gains.items())]
  for a in allocations[:max_rows]:
    lines.append(f"  image {a['image_id']:>12}: " +
                 "  ".join(f"{s} {a[s]['gain']:.3f}" for s in scales))
  return "\n".join(lines)


def write_reports(config: ml_collections.ConfigDict, workdir: Path, rows: list[dict],
                  reference: dict) -> dict[str, Any]:
  """results.csv, results.json, rd.png and the printed BD table."""
  names = [s for s in ("p2", "p3", "p4", "p5", "p6") if any(f"mse_{s}" in r for r in rows)]
  anchor_method = config.get("anchor_method") or rows[0]["method"]
  for r in rows:
    r["anchor_bpp_at_same_mAP"] = rd.anchor_rate_at(rows, anchor_method, r["mAP"])
  rd.write_csv(workdir / "results.csv", rows,
               extra=["anchor_bpp_at_same_mAP"] + [f"mse_{s}" for s in names] +
               [f"psnr_{s}" for s in names])
  table = rd.bd_table(rows, anchor_method)
  methods = {r["method"] for r in rows}
  for other in config.get("bd_references", None) or ():  # e.g. the image anchor, the base codec
    if other in methods and other != anchor_method:
      table += rd.bd_table(rows, other)
  rd.plot(workdir / "rd.png", rows, reference_map=reference.get("mAP"),
          title=f"{reference.get('detector', '')} on {Path(config.data.root).name} "
                f"{config.data.split} ({reference.get('num_images', '?')} images)")
  report = {"uncompressed": {k: reference.get(k) for k in ("mAP", "AP50", "AP75", "num_images")},
            "anchor_method": anchor_method, "points": rows, "bd": table}
  (workdir / "results.json").write_text(json.dumps(report, indent=1, default=float))
  (workdir / "results.md").write_text(rd.markdown_table(rows, names) + "\n\n```\n" +
                                      rd.format_bd_table(table) + "\n```\n")
  print(f"\nuncompressed mAP {reference.get('mAP', math.nan):.4f}  AP50 "
        f"{reference.get('AP50', math.nan):.4f}")
  print(f"{'method':<24} {'point':<18} {'bpp':>8} {'mAP':>7} {'AP50':>7} {'enc ms':>8} "
        f"{'dec ms':>8}")
  for r in rows:
    print(f"{r['method']:<24} {r['point']:<18} {r['bpp']:>8.4f} {r['mAP']:>7.4f} "
          f"{r['AP50']:>7.4f} {r['encode_ms']:>8.1f} {r['decode_ms']:>8.1f}")
  for r in rows:
    if r.get("allocations"):
      print(f"\n{r['method']} {r['point']}: per-image allocation (quantization gain per scale)")
      print(format_allocations(r["allocations"]))
  print("\n" + rd.format_bd_table(table))
  print(f"\nwrote {workdir / 'results.csv'}, results.json, results.md and rd.png")
  return report
