"""The range decoder's guard: valid streams decode exactly as without it, hostile ones end fast."""

import time

import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.entropy import range_coder, tables


def _table(rows=6, seed=0):
  rng = np.random.default_rng(seed)
  pmfs = [rng.dirichlet(np.ones(int(n))) for n in rng.integers(2, 40, rows)]
  return tables.from_pmfs(pmfs, [-int(len(p)) // 2 for p in pmfs])


def _unguarded(data, indexes, table):
  """What the decoder gave before the guard: the stream followed only by implicit zeros."""
  ops, tf = range_coder._ops(), range_coder._tf()  # pylint: disable=protected-access
  handle = ops.create_range_decoder(data, table.lookup)
  _, symbols = ops.entropy_decode_index(handle, indexes.ravel(),
                                        tf.constant([indexes.size], tf.int32), tf.int32)
  return symbols.numpy().reshape(indexes.shape) + table.offset[indexes]


@pytest.mark.parametrize("seed", range(40))
def test_guarded_decoding_of_valid_streams_is_unchanged(seed):
  rng = np.random.default_rng(seed)
  table = _table(seed=seed)
  n = int(rng.integers(1, 3000))
  indexes = rng.integers(0, table.num_rows, n).astype(np.int32)
  # Mostly in-table values, some far outside (escapes), some streams ending in long zero runs.
  values = np.round(rng.laplace(size=n) * rng.choice([0.3, 3.0, 30.0])).astype(np.int32)
  if seed % 4 == 0:
    values[n // 2:] = 0
  data = range_coder.encode(values, indexes, table)
  np.testing.assert_array_equal(range_coder.decode(data, indexes, table), values)
  np.testing.assert_array_equal(_unguarded(data, indexes, table), values)


def test_a_stream_that_runs_dry_inside_escapes_ends_fast():
  table = _table()
  n = 4096
  indexes = np.zeros(n, np.int32)
  # A stream of only escapes with huge values, cut to its first bytes: without the guard the
  # decoder would count implicit zero bits for ~2^31 steps per symbol.
  values = np.full(n, 2**29, np.int32)
  data = range_coder.encode(values, indexes, table)[:3]
  t = time.perf_counter()
  try:
    range_coder.decode(data, indexes, table)
  except errors.CorruptBitstreamError:
    pass
  assert time.perf_counter() - t < 5.0
