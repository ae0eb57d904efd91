import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables


@pytest.mark.parametrize("n", [1, 2, 7, 300, 5000])
def test_quantize_pmf_sums_to_total_and_keeps_every_symbol(n):
  rng = np.random.default_rng(n)
  pmf = rng.exponential(size=n) ** 4
  pmf[rng.integers(0, n, size=n // 3)] = 0
  counts = tables.quantize_pmf(pmf, 16)
  assert counts.sum() == 1 << 16
  assert counts.min() >= 1
  # Large probabilities are represented to within one count of the ideal share.
  ideal = pmf / pmf.sum() * ((1 << 16) - n)
  assert np.all(np.abs(counts - 1 - ideal) <= 1)


def test_quantize_pmf_is_deterministic_and_rejects_bad_input():
  pmf = np.full(10, 0.1)
  np.testing.assert_array_equal(tables.quantize_pmf(pmf), tables.quantize_pmf(pmf.copy()))
  with pytest.raises(ValueError):
    tables.quantize_pmf(np.array([0.5, np.nan]))
  with pytest.raises(ValueError):
    tables.quantize_pmf(np.ones(70000))


def test_table_layout_matches_range_coder_contract():
  t = tables.from_pmfs([np.array([0.5, 0.5]), np.array([0.1, 0.2, 0.3, 0.39])], [-1, 3])
  assert t.lookup.dtype == np.int32
  np.testing.assert_array_equal(t.lookup[:, 0], [-16, -16])
  np.testing.assert_array_equal(t.lookup[:, 1], [0, 0])
  np.testing.assert_array_equal(t.lookup[:, -1], [1 << 16, 1 << 16])
  np.testing.assert_array_equal(t.size, [2, 4])
  round_trip = tables.CDFTable.from_dict(t.to_dict())
  np.testing.assert_array_equal(round_trip.lookup, t.lookup)
  bad = t.to_dict()
  bad["lookup"] = bad["lookup"].copy()
  bad["lookup"][0, 2] = 70000
  with pytest.raises(ValueError, match="monotonically"):
    tables.CDFTable.from_dict(bad)


def test_range_coder_round_trip_with_escapes():
  t = tables.from_pmfs([np.array([0.7, 0.2, 0.1]), np.full(20, 0.05)], [0, -10])
  rng = np.random.default_rng(0)
  idx = rng.integers(0, 2, 50_000).astype(np.int32)
  values = np.where(idx == 0, rng.integers(-5, 8, idx.size), rng.integers(-40, 40, idx.size))
  data = range_coder.encode(values.astype(np.int32), idx, t)
  np.testing.assert_array_equal(range_coder.decode(data, idx, t), values)
  # Within 0.5% of the ideal information content under these exact tables.
  assert abs(8 * len(data) - tables.ideal_bits(t, values, idx)) < 0.005 * 8 * len(data) + 64


def test_range_coder_rejects_bad_arguments():
  t = tables.from_pmfs([np.array([0.5, 0.5])], [0])
  with pytest.raises(errors.InvalidInputError, match="integers"):
    range_coder.encode(np.zeros(3, np.float32), np.zeros(3, np.int32), t)
  with pytest.raises(errors.InvalidInputError, match=r"indexes must lie in \[0, 1\)"):
    range_coder.encode(np.zeros(3, np.int32), np.full(3, 1, np.int32), t)
  with pytest.raises(errors.InvalidInputError, match="shape"):
    range_coder.encode(np.zeros(3, np.int32), np.zeros(4, np.int32), t)
  with pytest.raises(errors.CorruptBitstreamError, match="empty"):
    range_coder.decode(b"", np.zeros(4, np.int32), t)
