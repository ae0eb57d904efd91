"""Learned entropy models (pure functions in jit) and their host-side coding (tables, range coder).

- `factorized`: the learned per-channel density ("entropy bottleneck", Balle et al. 2018).
- `gaussian`: Gaussian conditional with mean and scale, coded through a scale table.
- `channel_context`: channel-wise autoregressive context with LRP (Minnen and Singh 2020).
- `tables`: integer CDF tables; `range_coder`: the tensorflow-compression range coder.
- `determinism`: the float64 host path that makes decoder indexes reproducible.
"""

from hssc_jax.entropy import channel_context
from hssc_jax.entropy import determinism
from hssc_jax.entropy import factorized
from hssc_jax.entropy import gaussian
from hssc_jax.entropy import quantization
from hssc_jax.entropy import range_coder
from hssc_jax.entropy import tables
from hssc_jax.entropy.channel_context import ChannelContext
from hssc_jax.entropy.factorized import EntropyBottleneck
from hssc_jax.entropy.tables import CDFTable
