import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax.entropy import quantization as q


def test_ste_round_values_and_gradient_is_one():
  x = jnp.array([-1.7, -0.2, 0.4, 0.6, 2.5])
  np.testing.assert_array_equal(q.ste_round(x), np.round(np.asarray(x)))
  np.testing.assert_array_equal(jax.grad(lambda v: q.ste_round(v).sum())(x), np.ones(5))


@pytest.mark.parametrize("mode", ["ste", "round", "mixed"])
def test_rounding_modes_have_unit_gradient_for_reconstruction(mode):
  x = jnp.linspace(-3, 3, 11)
  mean = jnp.full(11, 0.3)
  grad = jax.grad(lambda v: q.quantize(v, mode, jax.random.PRNGKey(0), mean)[0].sum())(x)
  np.testing.assert_array_equal(grad, np.ones(11))


def test_round_mode_quantizes_around_offset():
  x = jnp.array([0.9, 1.2, -0.6])
  x_hat, x_rate = q.quantize(x, "round", offset=jnp.array([0.25, 0.25, 0.25]))
  np.testing.assert_allclose(x_hat, [1.25, 1.25, -0.75])
  np.testing.assert_array_equal(x_hat, x_rate)


def test_noise_is_bounded_and_unbiased():
  x = jnp.zeros(100_000)
  x_hat, x_rate = q.quantize(x, "noise", jax.random.PRNGKey(1))
  assert float(jnp.abs(x_hat).max()) <= 0.5
  assert abs(float(x_hat.mean())) < 0.01
  np.testing.assert_array_equal(x_hat, x_rate)


def test_mixed_mode_reconstruction_rounded_rate_noisy():
  x = jnp.linspace(-2, 2, 101)
  x_hat, x_rate = q.quantize(x, "mixed", jax.random.PRNGKey(2))
  np.testing.assert_array_equal(x_hat, np.round(np.asarray(x)))
  assert not np.array_equal(x_rate, x_hat)
  assert float(jnp.abs(x_rate - x).max()) <= 0.5


def test_bad_mode_and_missing_rng():
  with pytest.raises(ValueError, match="unknown quantization mode"):
    q.quantize(jnp.zeros(3), "floor")
  with pytest.raises(ValueError, match="needs an rng"):
    q.quantize(jnp.zeros(3), "noise")


def test_lower_bound_gradient_passes_only_upwards_below_bound():
  x = jnp.array([0.05, 0.5])
  # Loss decreasing in x (descent pushes x up): gradient passes everywhere.
  np.testing.assert_array_equal(jax.grad(lambda v: -q.lower_bound(v, 0.1).sum())(x), [-1., -1.])
  # Loss increasing in x (descent pushes x down): blocked below the bound, passed above.
  np.testing.assert_array_equal(jax.grad(lambda v: q.lower_bound(v, 0.1).sum())(x), [0., 1.])
  np.testing.assert_allclose(q.lower_bound(x, 0.1), [0.1, 0.5], rtol=1e-7)
