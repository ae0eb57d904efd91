import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.entropy import gaussian
from hssc_jax.entropy import tables

SCALES = gaussian.default_scale_table()


@pytest.fixture(scope="module")
def table():
  return gaussian.build_table(SCALES)


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=n) * 5
  scale = np.exp(rng.uniform(-1.5, 3.0, size=n))
  y = mean + scale * rng.normal(size=n)
  return y.astype(np.float32), mean.astype(np.float32), scale.astype(np.float32)


def test_likelihood_sums_to_one_over_integers():
  k = np.arange(-2000, 2001, dtype=np.float64)
  for s in (0.11, 0.7, 5.0, 300.0):
    np.testing.assert_allclose(gaussian.likelihood(k, 0.3, s, np).sum(), 1.0, atol=1e-9)


def test_scale_indexes_pick_smallest_table_scale_not_below():
  idx = gaussian.scale_indexes(np.array([0.01, 0.11, 0.1100001, 1.0, 1e6]), SCALES)
  assert idx[0] == 0 and idx[1] == 0 and idx[2] == 1 and idx[-1] == len(SCALES) - 1
  assert SCALES[idx[3]] >= 1.0 > SCALES[idx[3] - 1]


def test_decompress_compress_equals_quantize_exactly(table):
  y, mean, scale = _data(50_000)
  data, y_hat_enc, idx = gaussian.compress(table, SCALES, y, mean, scale)
  y_hat_dec = gaussian.decompress(table, SCALES, data, mean, scale)
  np.testing.assert_array_equal(y_hat_dec, y_hat_enc)
  # The host quantization is the evaluation-mode quantization of the model.
  y_hat_jit, _ = jax.jit(lambda *a: gaussian.conditional(*a, "round"))(y, mean, scale)
  np.testing.assert_array_equal(np.rint(y_hat_dec - mean), np.rint(np.asarray(y_hat_jit) - mean))
  np.testing.assert_allclose(y_hat_dec, y_hat_jit, rtol=0, atol=1e-5)


def test_real_bits_within_half_percent_of_estimate(table):
  y, mean, scale = _data(200_000, seed=1)
  _, est = gaussian.conditional(jnp.asarray(y), jnp.asarray(mean), jnp.asarray(scale), "round")
  est = float(est.sum())
  data, _, _ = gaussian.compress(table, SCALES, y, mean, scale)
  assert abs(8 * len(data) - est) <= 0.005 * est, (8 * len(data), est)


def test_noisy_bits_not_below_rounded_bits_on_average():
  y, mean, scale = (jnp.asarray(a) for a in _data(100_000, seed=2))
  _, rounded = gaussian.conditional(y, mean, scale, "round")
  _, noisy = gaussian.conditional(y, mean, scale, "noise", jax.random.PRNGKey(0))
  assert float(noisy.mean()) >= float(rounded.mean())


def test_gradients_flow_to_mean_and_scale():
  y, mean, scale = (jnp.asarray(a) for a in _data(1000, seed=3))
  g_mean, g_scale = jax.grad(lambda m, s: gaussian.conditional(y, m, s, "round")[1].sum(),
                             argnums=(0, 1))(mean, scale)
  assert np.all(np.isfinite(g_mean)) and np.all(np.isfinite(g_scale))
  assert float(jnp.abs(g_scale).sum()) > 0


def test_outliers_use_escape(table):
  mean = np.zeros(4, np.float32)
  scale = np.full(4, 0.11, np.float32)
  y = np.array([0.2, 1e5, -3e4, 7.0], np.float32)
  data, y_hat, _ = gaussian.compress(table, SCALES, y, mean, scale)
  np.testing.assert_array_equal(gaussian.decompress(table, SCALES, data, mean, scale), np.rint(y))


def test_bad_inputs(table):
  y, mean, scale = _data(10)
  with pytest.raises(errors.InvalidInputError, match="NaN/inf"):
    gaussian.compress(table, SCALES, np.where(np.arange(10) == 3, np.inf, y), mean, scale)
  with pytest.raises(errors.InvalidInputError, match="NaN/inf"):
    gaussian.compress(table, SCALES, y, mean, np.where(np.arange(10) == 3, np.nan, scale))
  with pytest.raises(errors.InvalidInputError, match="shapes differ"):
    gaussian.compress(table, SCALES, y, mean[:5], scale)
  with pytest.raises(ValueError, match="increasing"):
    gaussian.build_table(SCALES[::-1])


def test_table_is_deterministic(table):
  again = gaussian.build_table(SCALES)
  np.testing.assert_array_equal(again.lookup, table.lookup)
  assert table.num_rows == len(SCALES) and table.precision == tables.PRECISION
