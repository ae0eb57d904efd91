"""Rate-accuracy reports: BD-rate / BD-mAP tables, the MPEG-style CSV and the RD plot.

BD-rate (Bjontegaard, VCEG-M33, 2001) is the average log-rate difference between two curves over
their common accuracy interval, here with piecewise cubic Hermite (pchip) interpolation through the
`bjontegaard` package (Herglotz et al., "The Bjontegaard Bible", 2022). The accuracy axis is mAP
(x100, in points) as in the MPEG feature-coding common test conditions; BD-mAP is the mean mAP gain
over the common log-rate interval. A curve needs at least two points with distinct rates and
distinct mAPs; otherwise the entry is NaN with the reason.
"""

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

CSV_COLUMNS = ("method", "point", "bpp", "mAP", "AP50", "encode_ms", "decode_ms", "num_images")


def curve(rows: Sequence[Mapping[str, Any]], method: str) -> tuple[np.ndarray, np.ndarray]:
  """(bpp, mAP x 100) of `method`'s rows, sorted by rate."""
  pts = sorted((float(r["bpp"]), 100.0 * float(r["mAP"])) for r in rows if r["method"] == method)
  return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _usable(rate: np.ndarray, acc: np.ndarray) -> str | None:
  if len(rate) < 2:
    return f"{len(rate)} point(s): at least 2 are needed"
  if np.any(rate <= 0):
    return "a rate is <= 0"
  if len(np.unique(acc)) != len(acc) or len(np.unique(rate)) != len(rate):
    return "two points share a rate or an mAP"
  return None


def bd_metrics(anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
               ) -> dict[str, Any]:
  """{"bd_rate": % (negative = fewer bits than the anchor), "bd_map": mAP points, "note": str}."""
  import bjontegaard  # pylint: disable=g-import-not-at-top
  why = _usable(*anchor) or _usable(*test)
  if why:
    return {"bd_rate": math.nan, "bd_map": math.nan, "note": why}
  # The package interpolates accuracy -> log-rate for BD-rate, so accuracy must be sorted.
  a_acc, t_acc = (np.argsort(c[1]) for c in (anchor, test))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bd_rate = bjontegaard.bd_rate(anchor[0][a_acc], anchor[1][a_acc], test[0][t_acc],
                                  test[1][t_acc], method="pchip", require_matching_points=False)
    bd_map = bjontegaard.bd_psnr(anchor[0], anchor[1], test[0], test[1], method="pchip",
                                 require_matching_points=False)
  note = "; ".join(sorted({str(w.message).split(".")[0] for w in caught}))
  return {"bd_rate": float(bd_rate), "bd_map": float(bd_map), "note": note}


def bd_table(rows: Sequence[Mapping[str, Any]], anchor_method: str) -> list[dict[str, Any]]:
  """BD-rate and BD-mAP of every method against `anchor_method`."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  if anchor_method not in methods:
    raise ValueError(f"anchor method {anchor_method!r} has no points; methods: {methods}")
  ref = curve(rows, anchor_method)
  out = []
  for m in methods:
    if m == anchor_method:
      continue
    out.append(dict(method=m, anchor=anchor_method, **bd_metrics(ref, curve(rows, m))))
  return out


def format_bd_table(table: Sequence[Mapping[str, Any]]) -> str:
  lines = [f"{'method':<28} {'BD-rate %':>10} {'BD-mAP':>8}  vs anchor",
           "-" * 70]
  for r in table:
    note = f"  ({r['note']})" if r.get("note") else ""
    lines.append(f"{r['method']:<28} {r['bd_rate']:>10.2f} {r['bd_map']:>8.3f}  "
                 f"{r['anchor']}{note}")
  return "\n".join(lines)


def anchor_rate_at(rows: Sequence[Mapping[str, Any]], anchor_method: str, mAP: float) -> float:
  """The anchor's bpp at accuracy `mAP` (pchip in log-rate; NaN outside the anchor's range).

  Lets a single operating point be compared with a curve: rate saving = 1 - bpp / this.
  """
  from scipy.interpolate import PchipInterpolator  # pylint: disable=g-import-not-at-top
  rate, acc = curve(rows, anchor_method)
  if _usable(rate, acc):
    return math.nan
  order = np.argsort(acc)
  acc, rate = acc[order], rate[order]
  x = 100.0 * mAP
  if not acc[0] <= x <= acc[-1]:
    return math.nan
  return float(10 ** PchipInterpolator(acc, np.log10(rate))(x))


def markdown_table(rows: Sequence[Mapping[str, Any]], scales: Sequence[str] = ()) -> str:
  """The points as a markdown table (what the README shows), with per-scale feature MSE and the
  anchor's rate at the same mAP where it is known."""
  head = ["method", "point", "bpp", "mAP", "AP50"] + [f"MSE {s}" for s in scales] + [
      "anchor bpp at same mAP", "enc ms", "dec ms"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
  for r in rows:
    mse = [f"{r[f'mse_{s}']:.4g}" if f"mse_{s}" in r else "-" for s in scales]
    ref = r.get("anchor_bpp_at_same_mAP", math.nan)
    cells = [r["method"], str(r["point"]), f"{r['bpp']:.4f}", f"{r['mAP']:.4f}",
             f"{r['AP50']:.4f}"] + mse + ["-" if math.isnan(ref) else f"{ref:.4f}",
                                          f"{r['encode_ms']:.0f}", f"{r['decode_ms']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              extra: Sequence[str] = ()) -> None:
  """One row per operating point (the shape of the MPEG FCM CTC tables)."""
  cols = list(CSV_COLUMNS) + [c for c in extra if c not in CSV_COLUMNS]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({c: (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, ""))
                  for c in cols})


def read_csv(path: str | Path) -> list[dict[str, Any]]:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in ("bpp", "mAP", "AP50", "encode_ms", "decode_ms"):
      r[k] = float(r[k])
  return rows


def plot(path: str | Path, rows: Sequence[Mapping[str, Any]], reference_map: float | None = None,
         title: str = "") -> None:
  """mAP vs bpp (log rate axis), one curve per method, the uncompressed mAP as a dashed line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  for m in dict.fromkeys(r["method"] for r in rows):
    rate, acc = curve(rows, m)
    ax.plot(rate, acc, "o-", label=m, ms=4)
  if reference_map is not None:
    ax.axhline(100 * reference_map, color="k", ls="--", lw=1,
               label=f"uncompressed ({100 * reference_map:.1f})")
  ax.set_xscale("log")
  ax.set_xlabel("bits per pixel of the original image")
  ax.set_ylabel("mAP@[.5:.95] (%)")
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
