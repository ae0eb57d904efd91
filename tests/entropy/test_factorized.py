import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.entropy import factorized
from hssc_jax.entropy import tables

_spec = importlib.util.spec_from_file_location("helpers", Path(__file__).with_name("helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def fitted():
  samples = helpers.laplace_samples(8192, 16)  # 131072 elements
  model, variables = helpers.fit_factorized(samples)
  table = factorized.build_table(variables["params"]["density"])
  return samples, model, variables, table


def test_density_is_monotone_and_normalized(fitted):
  _, _, variables, _ = fitted
  p = {k: np.asarray(v, np.float64) for k, v in variables["params"]["density"].items()}
  x = np.linspace(-200, 200, 4001)[:, None].repeat(16, axis=1)
  logits = factorized.logits_cumulative(p, x, np)
  assert np.all(np.diff(logits, axis=0) >= 0)
  ints = np.arange(-300, 301)[:, None].repeat(16, axis=1).astype(np.float64)
  np.testing.assert_allclose(factorized.likelihood(p, ints, np).sum(0), 1.0, atol=1e-6)


def test_decompress_compress_equals_quantize_exactly(fitted):
  samples, model, variables, table = fitted
  x = samples.reshape(8, 32, 32, 16)
  x_hat, _ = model.apply(variables, x, "round")
  data, encoder_x_hat = factorized.compress(table, x)
  decoded = factorized.decompress(table, data, x.shape)
  np.testing.assert_array_equal(decoded, np.asarray(x_hat))
  np.testing.assert_array_equal(decoded, encoder_x_hat)


def test_real_bits_within_half_percent_of_estimate(fitted):
  samples, model, variables, table = fitted
  _, est = model.apply(variables, samples, "round")
  est = float(est.sum())
  data, _ = factorized.compress(table, samples)
  assert samples.size >= 100_000
  assert abs(8 * len(data) - est) <= 0.005 * est, (8 * len(data), est)


def test_noisy_bits_not_below_rounded_bits_on_average(fitted):
  samples, model, variables, _ = fitted
  _, rounded = model.apply(variables, samples, "round")
  noisy = [model.apply(variables, samples, "noise", rngs={"noise": jax.random.PRNGKey(i)})[1].mean()
           for i in range(4)]
  assert float(np.mean(noisy)) >= float(rounded.mean())


def test_table_covers_all_but_tail_mass(fitted):
  _, _, variables, table = fitted
  p = {k: np.asarray(v, np.float64) for k, v in variables["params"]["density"].items()}
  for c in range(16):
    v = np.arange(table.offset[c], table.offset[c] + table.size[c], dtype=np.float64)
    x = np.zeros((v.size, 16))
    x[:, c] = v
    covered = factorized.likelihood(p, x, np)[:, c].sum()
    assert covered >= 1 - 2**-8 - 1e-9


def test_values_far_outside_the_table_use_the_escape(fitted):
  _, _, _, table = fitted
  x = np.zeros((4, 16), np.float32)
  x[0, 3], x[1, 7], x[2, 0] = 1e4, -5e3, 123.4
  data, x_hat = factorized.compress(table, x)
  np.testing.assert_array_equal(factorized.decompress(table, data, x.shape), np.rint(x))


def test_bad_inputs_raise_specific_errors(fitted):
  _, _, _, table = fitted
  x = np.zeros((2, 16), np.float32)
  x[1, 1] = np.nan
  with pytest.raises(errors.InvalidInputError, match="NaN/inf"):
    factorized.compress(table, x)
  with pytest.raises(errors.InvalidInputError, match="channels"):
    factorized.compress(table, np.zeros((2, 15), np.float32))
  data, _ = factorized.compress(table, np.zeros((2, 16), np.float32))
  with pytest.raises(errors.CorruptBitstreamError, match="shape"):
    factorized.decompress(table, data, (2, 8))


def test_table_build_is_deterministic(fitted):
  _, _, variables, table = fitted
  again = factorized.build_table(variables["params"]["density"])
  np.testing.assert_array_equal(again.lookup, table.lookup)
  np.testing.assert_array_equal(again.offset, table.offset)
  assert isinstance(table, tables.CDFTable)
