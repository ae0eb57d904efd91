"""Deterministic evaluation of entropy parameters, so the decoder reproduces the encoder's indexes.

The range decoder only works if it selects, for every symbol, the same CDF row as the encoder. Rows
come from entropy parameters (Gaussian scales) that a network predicts from already-decoded data, and
a network evaluated in float32 by differently compiled code (jit or not, other XLA flags, CPU or GPU)
can differ in the last bits, enough to move a scale across a table boundary: about one element in
1e5 at float32 accuracy, i.e. a broken stream for a typical latent.

Design: on both sides the entropy-parameter networks (hyper-synthesis, channel-context transforms) run
through `HostFunction`, which evaluates them in float64 on the CPU backend whatever the training
device. Their rounding error (~1e-16 relative) makes a boundary crossing about 1e9 times rarer than in
float32, and the same host path is used by a CPU or a GPU deployment. Means are then rounded to
float32 and scales mapped to table rows by integer operations on their float32 bits
(`gaussian.scale_indexes`), so the last-ulp differences left in float64 vanish from both the
reconstruction and the indexes except in the rare case of a value straddling a rounding boundary.
The analysis and synthesis transforms stay on the accelerator in float32: they affect only what is
coded, not how. As a guard, each bitstream stores a CRC-32 of its index arrays (`digest`); a decoder
whose indexes differ raises DeterminismError instead of returning wrong features.
"""

import contextlib
import zlib
from typing import Any, Callable

import jax
import numpy as np

from hssc_jax import errors


def x64() -> contextlib.AbstractContextManager:
  """Context manager enabling float64 in JAX (jax.enable_x64 on new JAX, experimental on old)."""
  ctx = getattr(jax, "enable_x64", None)
  if ctx is None:
    from jax.experimental import enable_x64 as ctx  # pylint: disable=g-import-not-at-top
  return ctx(True)


def _to64(x: Any) -> Any:
  a = np.asarray(x)
  return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


class HostFunction:
  """Runs `fn(*args)` in float64 on the CPU backend and returns numpy float64 outputs.

  `fn` must be a pure function of its (pytree) arguments; floating inputs are cast to float64.
  With `jit=False` the function runs op by op (used to demonstrate that differently compiled
  decoders agree).
  """

  def __init__(self, fn: Callable[..., Any], jit: bool = True):
    self._fn = fn
    self._jitted = jax.jit(fn) if jit else None
    self._first: tuple[Any, Any] | None = None  # (params, their float64 copy): reused per call

  def __call__(self, *args: Any) -> Any:
    cpu = jax.devices("cpu")[0]
    with x64():
      to64 = lambda tree: jax.tree.map(lambda a: jax.device_put(_to64(a), cpu), tree)
      if args and self._first is not None and self._first[0] is args[0]:
        first = self._first[1]  # the same parameters as the last call (treated as immutable)
      elif args:
        first = to64(args[0])
        self._first = (args[0], first)
      args = (first,) + tuple(to64(a) for a in args[1:]) if args else args
      out = self._jitted(*args) if self._jitted is not None else self._fn(*args)
      return jax.tree.map(np.asarray, out)


DIGEST_BITS = 14  # two bytes in the compact container; a platform mismatch changes many indexes


def digest(*index_arrays: np.ndarray) -> int:
  """The low DIGEST_BITS bits of the CRC-32 of int32 index arrays, in order."""
  crc = 0
  for a in index_arrays:
    crc = zlib.crc32(np.ascontiguousarray(a, np.int32).tobytes(), crc)
  return crc & ((1 << DIGEST_BITS) - 1)


_COLLECTED: list[list[int]] = []


@contextlib.contextmanager
def collecting():
  """Within it `check_digest` records the decoder's digests instead of checking them one by one
  (the compact container carries one `combine`d digest for all streams); yields the list."""
  got: list[int] = []
  _COLLECTED.append(got)
  try:
    yield got
  finally:
    _COLLECTED.pop()


def combine(digests: Any) -> int:
  """One DIGEST_BITS digest of several stream digests, independent of their order."""
  data = np.asarray(sorted(int(d) for d in digests), np.int64).tobytes()
  return zlib.crc32(data) & ((1 << DIGEST_BITS) - 1)


def check_digest(expected: int, *index_arrays: np.ndarray) -> None:
  """Raises DeterminismError when the decoder's indexes differ from the encoder's."""
  got = digest(*index_arrays)
  if _COLLECTED:
    _COLLECTED[-1].append(got)
    return
  if got != expected:
    raise errors.DeterminismError(
        f"decoder entropy-model indexes differ from the encoder's (digest {got:04x} != "
        f"{expected:04x}): the entropy-parameter path is not reproducible on this platform")
