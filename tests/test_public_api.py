"""The package's public surface: every exported name resolves, and names agree with the registry."""

import hssc_jax
from hssc_jax.codecs import registry


def test_every_exported_name_resolves():
  for name in hssc_jax.__all__:
    assert getattr(hssc_jax, name) is not None, name


def test_the_paper_codecs_are_exported_under_their_registry_names():
  for name in ("hyperprior", "cross_scale", "lmfc", "hssc", "hssc_paper", "hsc", "mfiba",
               "mfiba_cross"):
    cls = registry.codec_class(name)
    assert getattr(hssc_jax.codecs, cls.__name__) is cls
    assert issubclass(cls, hssc_jax.FeatureCodec)
  assert hssc_jax.build_codec is registry.build_codec
