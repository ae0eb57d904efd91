"""Host-side integer CDF tables for range coding, built deterministically in float64 numpy.

A `CDFTable` holds R distributions ("rows"). Row r codes integer values v in
[offset[r], offset[r] + size[r]) as symbols v - offset[r]; any other value is coded through the
escape symbol `size[r]` followed by an Elias-gamma code (the overflow path of the
tensorflow-compression range coder, enabled by storing the precision negated). Every symbol, the
escape included, gets at least one count out of 2**precision, so any integer can be coded.

Tables are built once from the model parameters (`factorized.build_table`,
`gaussian.build_table`), saved with the checkpoint or the zoo file and loaded by the decoder: the
decoder never rebuilds them, so floating-point differences between machines (NumPy's exp and log
can take other code paths on other CPUs) cannot change them. The quantization
of a pmf to counts is pure integer arithmetic after one float64 scaling (largest-remainder method).
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from hssc_jax import errors

PRECISION = 16


@dataclasses.dataclass(frozen=True)
class CDFTable:
  """Quantized CDFs in the layout of `tensorflow_compression_ops.create_range_encoder`.

  Attributes:
    lookup: (R, L) int32; lookup[r, 0] = -precision (overflow enabled), lookup[r, 1:] the CDF
      (0, ..., 2**precision) padded with 2**precision (trailing zero-probability padding).
    offset: (R,) int32, the value coded as symbol 0 in each row.
    size: (R,) int32, number of regular symbols in each row; symbol `size` is the escape.
  """

  lookup: np.ndarray
  offset: np.ndarray
  size: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.lookup.shape[0])

  @property
  def precision(self) -> int:
    return int(-self.lookup[0, 0])

  def to_dict(self) -> dict[str, np.ndarray]:
    return {"lookup": self.lookup, "offset": self.offset, "size": self.size}

  @classmethod
  def from_dict(cls, d: Mapping[str, np.ndarray]) -> "CDFTable":
    t = cls(np.asarray(d["lookup"], np.int32), np.asarray(d["offset"], np.int32),
            np.asarray(d["size"], np.int32))
    t.validate()
    return t

  def validate(self) -> None:
    """Raises ValueError unless the table is well formed (monotone CDFs ending at 2**precision)."""
    lk = self.lookup
    if lk.ndim != 2 or self.offset.shape != (lk.shape[0],) or self.size.shape != (lk.shape[0],):
      raise ValueError("CDF table arrays have inconsistent shapes")
    p = -int(lk[0, 0])
    if not (1 <= p <= 16) or np.any(lk[:, 0] != -p):
      raise ValueError("CDF table precision must be in [1, 16] and equal across rows")
    cdf = lk[:, 1:]
    if np.any(cdf[:, 0] != 0) or np.any(np.diff(cdf, axis=1) < 0) or np.any(cdf[:, -1] != 1 << p):
      raise ValueError("CDF table rows must rise monotonically from 0 to 2**precision")
    if np.any(self.size < 1) or np.any(self.size + 2 > cdf.shape[1]):
      raise ValueError("CDF table sizes do not fit the lookup width")


def quantize_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
  """Integer counts summing to 2**precision, every symbol at least 1 (largest-remainder method).

  Deterministic: one float64 scaling, then integer arithmetic with a stable tie-break.
  """
  pmf = np.asarray(pmf, np.float64)
  if pmf.ndim != 1 or pmf.size < 1 or not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
    raise ValueError("pmf must be a non-empty 1-D array of finite non-negative numbers")
  total = 1 << precision
  free = total - pmf.size
  if free <= 0:
    raise ValueError(f"{pmf.size} symbols do not fit in precision {precision}")
  s = pmf.sum()
  raw = pmf / s * free if s > 0 else np.full(pmf.shape, free / pmf.size)
  base = np.floor(raw).astype(np.int64)
  short = free - int(base.sum())
  order = np.argsort(-(raw - base), kind="stable")
  base[order[:short]] += 1
  return base + 1


def from_pmfs(pmfs: Sequence[np.ndarray], offsets: Sequence[int],
              precision: int = PRECISION) -> CDFTable:
  """Builds a table from per-row pmfs over the regular symbols (tail mass goes to the escape)."""
  rows = []
  for pmf in pmfs:
    pmf = np.asarray(pmf, np.float64)
    tail = max(0.0, 1.0 - float(pmf.sum()))
    counts = quantize_pmf(np.append(pmf, tail), precision)
    rows.append(np.concatenate([[0], np.cumsum(counts)]))
  width = 1 + max(len(r) for r in rows)
  lookup = np.full((len(rows), width), 1 << precision, np.int32)
  lookup[:, 0] = -precision
  for i, r in enumerate(rows):
    lookup[i, 1:1 + len(r)] = r
  size = np.array([len(p) for p in pmfs], np.int32)
  table = CDFTable(lookup, np.asarray(offsets, np.int32), size)
  table.validate()
  return table


def ideal_bits(table: CDFTable, values: np.ndarray, indexes: np.ndarray) -> float:
  """Information content of `values` under the quantized table, in bits.

  Escaped values are charged the escape symbol plus the payload the tensorflow-compression coder
  writes for them (an Elias-gamma code of the overflow and a sign, one bit each), so this is what an
  ideal arithmetic coder spends with these exact tables (for tests and benchmarks).
  """
  values = np.asarray(values, np.int64).ravel()
  indexes = np.asarray(indexes, np.int64).ravel()
  sym = values - table.offset[indexes]
  size = table.size[indexes]
  escaped = (sym < 0) | (sym >= size)
  s = np.where(escaped, size, sym)
  cdf = table.lookup[:, 1:].astype(np.int64)
  p = (cdf[indexes, s + 1] - cdf[indexes, s]) / float(1 << table.precision)
  bits = -np.log2(p).sum()
  if np.any(escaped):
    gamma = np.where(sym[escaped] < 0, -sym[escaped], sym[escaped] - size[escaped] + 1)
    bits += float((2 * np.floor(np.log2(gamma)) + 2).sum())
  return float(bits)


def check_finite(name: str, x: np.ndarray) -> None:
  """Raises InvalidInputError when `x` holds NaN or inf."""
  if not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise errors.InvalidInputError(f"{name} holds {bad} NaN/inf values; cannot entropy-code it")
