"""Bootstrap intervals for BD-rates: how much of a BD-rate the sample of images decides.

Efron's bootstrap over images: draw as many images as the set has, with replacement; score every
operating point on the draw (bpp from the drawn images' bits and pixels, mAP from COCOeval on the
drawn images, a duplicate counting as another image) and compute each method's BD-rate against the
anchor on those points. The spread of the BD-rates over draws is their sampling error on sets of
this size and kind: what another set of as many images could give.

COCOeval matches detections to ground truth one (image, category) at a time, so each point is
evaluated once (`PointScores`) and a draw only re-accumulates the per-image matches in its order.
The records are what `eval.py` writes beside each point (`codec_eval.detections_path`).
"""

import copy
import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from hssc_jax.errors import InvalidInputError
from hssc_jax.metrics import coco
from hssc_jax.metrics import rd


@dataclasses.dataclass
class PointScores:
  """One operating point evaluated per image: COCOeval after `evaluate()`, and bits and pixels
  per image id."""

  evaluator: Any
  bits: dict[int, float]
  pixels: dict[int, float]

  @classmethod
  def of(cls, gt: Any, record: Mapping[str, Any]) -> "PointScores":
    """From a point's record ({"image_ids", "bits", "pixels", "results"}) and the ground truth
    (json path or pycocotools COCO)."""
    ids = [int(i) for i in record["image_ids"]]
    if not len(ids) == len(record["bits"]) == len(record["pixels"]):
      raise InvalidInputError(f"{len(ids)} image ids, {len(record['bits'])} bit counts and "
                              f"{len(record['pixels'])} pixel counts must have the same length")
    evaluator, _ = coco.per_image_evaluation(gt, record["results"], image_ids=ids)
    if evaluator.params.areaRngLbl[0] != "all" or evaluator.params.maxDets[-1] != 100:
      raise InvalidInputError("pycocotools' defaults changed: area 'all' first, 100 detections last")
    return cls(evaluator, dict(zip(ids, map(float, record["bits"]))),
               dict(zip(ids, map(float, record["pixels"]))))

  def score(self, draw: Sequence[int]) -> tuple[float, float]:
    """(bpp, mAP@[.5:.95]) on the images `draw` (ids, repeats allowed)."""
    e = self.evaluator
    p = e.params
    index = {i: n for n, i in enumerate(p.imgIds)}
    try:
      positions = [index[int(i)] for i in draw]
    except KeyError as err:
      raise InvalidInputError(f"image id {err.args[0]} was not coded at this point") from None
    # evalImgs runs over (category, area range, image); only area "all" at 100 detections per
    # image enters mAP@[.5:.95], so the draw accumulates that alone.
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    drawn = copy.copy(e)
    drawn.evalImgs = [e.evalImgs[k * n_area * n_img + i] for k in range(len(p.catIds))
                      for i in positions]
    drawn.params = copy.copy(p)
    drawn.params.imgIds = [p.imgIds[i] for i in positions]
    drawn.params.areaRng, drawn.params.areaRngLbl = p.areaRng[:1], p.areaRngLbl[:1]
    drawn.params.maxDets = p.maxDets[-1:]
    drawn._paramsEval = copy.copy(drawn.params)  # pylint: disable=protected-access
    with coco._quiet(False):  # pylint: disable=protected-access
      drawn.accumulate()
    precision = drawn.eval["precision"][:, :, :, 0, 0]
    valid = precision[precision > -1]
    mAP = float(np.mean(valid)) if valid.size else -1.0
    bits = sum(self.bits[int(i)] for i in draw)
    return bits / sum(self.pixels[int(i)] for i in draw), mAP


def bd_rates(scores: Mapping[str, Mapping[str, PointScores]], anchor: str, draw: Sequence[int]
             ) -> dict[str, float]:
  """BD-rate (%) of every method against `anchor` with every point scored on `draw`."""
  if anchor not in scores:
    raise InvalidInputError(f"anchor method {anchor!r} has no points; methods: {list(scores)}")
  rows = [dict(method=m, point=label, **dict(zip(("bpp", "mAP"), s.score(draw))))
          for m, points in scores.items() for label, s in points.items()]
  return {b["method"]: b["bd_rate"] for b in rd.bd_table(rows, anchor)}


def bootstrap_bd(scores: Mapping[str, Mapping[str, PointScores]], anchor: str, image_ids: Sequence[int],
                 *, samples: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
  """BD-rates of every method against `anchor` over `samples` draws of `image_ids` with
  replacement: {method: (samples,) array, NaN where a draw leaves no curve overlap}."""
  if samples < 1:
    raise InvalidInputError(f"samples must be >= 1, got {samples}")
  rng = np.random.default_rng(seed)
  ids = np.asarray(sorted(int(i) for i in image_ids))
  out: dict[str, list[float]] = {}
  for _ in range(samples):
    for m, v in bd_rates(scores, anchor, rng.choice(ids, size=len(ids), replace=True)).items():
      out.setdefault(m, []).append(v)
  return {m: np.asarray(v, np.float64) for m, v in out.items()}


def summarize(draws: Mapping[str, np.ndarray], threshold: float = math.nan) -> list[dict[str, Any]]:
  """Per method: median and 5th/95th percentiles of the BD-rate draws, the share of draws without
  a BD-rate, and (with `threshold`) the share of draws at or below it."""
  out = []
  for m, v in draws.items():
    ok = v[np.isfinite(v)]
    row = dict(method=m, draws=len(v), missing=1.0 - len(ok) / max(len(v), 1))
    row.update(zip(("p5", "median", "p95"), np.percentile(ok, [5, 50, 95]) if ok.size else
                   (math.nan,) * 3))
    if not math.isnan(threshold):
      row["at_or_below"] = float(np.mean(ok <= threshold)) if ok.size else math.nan
    out.append(row)
  return out
