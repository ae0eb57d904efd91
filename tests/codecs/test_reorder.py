"""HSSC channel reordering: permutation coding, exact inverse, similarity statistics, solvers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hssc_jax import errors
from hssc_jax.codecs import reorder


def ccc(a, b):
  a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
  return 2 * np.mean((a - a.mean()) * (b - b.mean())) / (a.var() + b.var() + (a.mean() - b.mean())**2)


def drifting_channels(c, h=12, w=12, n=3, seed=0):
  """Channels that drift smoothly with their index: channel k resembles k - 1 and k + 1."""
  rng = np.random.default_rng(seed)
  steps = rng.normal(0, 0.3, (n, h, w, c)).cumsum(-1)
  return steps + rng.normal(0, 1.0, (n, h, w, 1))


@pytest.mark.parametrize("c", [1, 2, 3, 7, 64, 128, 256])
def test_permutation_coding_round_trip_and_size(c):
  rng = np.random.default_rng(c)
  for _ in range(3):
    perm = rng.permutation(c)
    data = reorder.encode_permutation(perm)
    assert len(data) == reorder.permutation_bytes(c) == max(1, math.ceil(math.log2(math.factorial(c)) / 8))
    np.testing.assert_array_equal(reorder.decode_permutation(data, c), perm)
  last = np.arange(c)[::-1]                       # the largest rank, C! - 1
  np.testing.assert_array_equal(reorder.decode_permutation(reorder.encode_permutation(last), c),
                                last)


def test_permutation_sizes_match_the_docstring():
  assert 8 * reorder.permutation_bytes(256) == 1688          # ceil(1684 bits / 8) bytes
  assert reorder.permutation_bytes(64) + reorder.permutation_bytes(128) + \
      reorder.permutation_bytes(256) == 338


def test_bad_permutation_streams_are_corrupt():
  with pytest.raises(errors.CorruptBitstreamError, match="out of range"):
    reorder.decode_permutation(b"\xff" * reorder.permutation_bytes(64), 64)
  with pytest.raises(errors.CorruptBitstreamError, match="bytes"):
    reorder.decode_permutation(b"\x00" * 3, 64)


@given(st.integers(1, 300), st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_apply_then_undo_is_identity_exactly(c, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 3, 4, c)).astype(np.float32)
  perm = rng.permutation(c)
  y = reorder.apply(x, perm)
  np.testing.assert_array_equal(y[..., 0], x[..., perm[0]])
  np.testing.assert_array_equal(reorder.undo(y, perm), x)
  np.testing.assert_array_equal(reorder.inverse(reorder.inverse(perm)), perm)


def test_channel_stats_match_direct_ccc_and_stream():
  x = drifting_channels(5, h=6, w=7, n=4)
  g, l_h, l_v = reorder.ChannelStats(5).update(x).similarities()
  assert np.allclose(np.diag(g), 1.0) and np.allclose(g, g.T)
  assert math.isclose(g[1, 3], ccc(x[..., 1], x[..., 3]), rel_tol=1e-9)
  assert math.isclose(l_h[2, 4], ccc(x[:, :, -1, 2], x[:, :, 0, 4]), rel_tol=1e-9)
  assert math.isclose(l_v[4, 0], ccc(x[:, -1, :, 4], x[:, 0, :, 0]), rel_tol=1e-9)
  s = reorder.ChannelStats(5)
  for img in x:                                    # streaming, one HWC image at a time
    s.update(img)
  for a, b in zip(s.similarities(), (g, l_h, l_v)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  with pytest.raises(errors.InvalidInputError, match="NaN"):
    reorder.ChannelStats(5).update(np.full((2, 2, 5), np.nan))
  with pytest.raises(errors.InvalidInputError, match="empty"):
    reorder.ChannelStats(5).similarities()


@pytest.mark.parametrize("c,cols", [(7, 3), (12, 4), (20, 5), (9, 9)])
def test_swap_deltas_equal_brute_force(c, cols):
  rng = np.random.default_rng(c)
  w_h, w_v = rng.normal(size=(c, c)), rng.normal(size=(c, c))
  perm = rng.permutation(c)
  delta = reorder.swap_deltas(perm, cols, w_h, w_v)
  j0 = reorder.grid_objective(perm, cols, w_h, w_v)
  for p in range(c):
    for q in range(c):
      swapped = perm.copy()
      swapped[[p, q]] = swapped[[q, p]]
      assert math.isclose(reorder.grid_objective(swapped, cols, w_h, w_v) - j0, delta[p, q],
                          abs_tol=1e-9)


def test_serpentine_places_chain_neighbours_side_by_side():
  np.testing.assert_array_equal(reorder.serpentine(np.arange(10), 4),
                                [0, 1, 2, 3, 7, 6, 5, 4, 8, 9])


def test_orders_are_permutations_and_improve_their_objectives():
  c, cols = 48, 8
  x = drifting_channels(c)
  shuffle = np.random.default_rng(1).permutation(c)
  sims = reorder.ChannelStats(c).update(x[..., shuffle]).similarities()
  g, l_h, l_v = sims
  np.testing.assert_array_equal(reorder.order(sims, cols, "none"), np.arange(c))
  chain_score = lambda p: sum(g[a, b] for a, b in zip(p[:-1], p[1:]))  # pylint: disable=g-long-lambda
  glob = reorder.order(sims, cols, "global")
  both = reorder.order(sims, cols, "global+local")
  for p in (glob, both):
    np.testing.assert_array_equal(np.sort(p), np.arange(c))
  # The global chain (read back along the serpentine) recovers most of the hidden drift order.
  chain = reorder.serpentine(glob, cols)          # serpentine is its own inverse row by row
  assert chain_score(chain) > chain_score(np.arange(c)) + 5
  assert chain_score(chain) >= chain_score(np.argsort(shuffle)) - 1.0
  # The local search only ever improves the grid objective it maximises.
  w_h, w_v = g + l_h, g + l_v
  assert reorder.grid_objective(both, cols, w_h, w_v) >= reorder.grid_objective(glob, cols, w_h, w_v)
  with pytest.raises(errors.ConfigError, match="reorder mode"):
    reorder.order(sims, cols, "local")


def test_fit_returns_one_permutation_per_scale():
  pyrs = [{"p3": drifting_channels(16, n=1, seed=s)[0], "p4": drifting_channels(32, n=1, seed=s)[0]}
          for s in range(3)]
  perms = reorder.fit(pyrs, {"p3": (4, 4), "p4": (4, 8)}, "global+local")
  assert sorted(perms) == ["p3", "p4"]
  assert sorted(perms["p4"].tolist()) == list(range(32))
  with pytest.raises(errors.ConfigError, match="not a permutation"):
    reorder.check_permutation([0, 0, 1], 3)
