"""Convolutional building blocks shared by the codecs (NHWC)."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hssc_jax.layers.gdn import GDN


def conv(features: int, kernel: int = 3, stride: int = 1, name: str | None = None,
         kernel_init: Callable[..., jax.Array] | None = None) -> nn.Conv:
  """"SAME" convolution; `kernel_init` replaces flax's default initialiser where given."""
  init = {} if kernel_init is None else {"kernel_init": kernel_init}
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding="SAME", name=name, **init)


def deconv(features: int, kernel: int = 3, stride: int = 2, name: str | None = None):
  """Transposed convolution that multiplies the spatial size by `stride` exactly."""
  return nn.ConvTranspose(features, (kernel, kernel), (stride, stride), padding="SAME", name=name)


class ResidualBlock(nn.Module):
  """x + conv(act(conv(act(x)))) with LeakyReLU, as in Cheng et al. (CVPR 2020) transforms;
  `identity_init` starts the second convolution at zero, so the block starts as the identity."""

  features: int
  kernel: int = 3
  identity_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = conv(self.features, self.kernel)(nn.leaky_relu(x))
    init = nn.initializers.zeros if self.identity_init else None
    h = conv(x.shape[-1], self.kernel, kernel_init=init)(nn.leaky_relu(h))
    return x + h


def latent_blocks(x: jax.Array, blocks: int) -> jax.Array:
  """`blocks` identity-initialised residual blocks at the latent grid (`Analysis`, `Synthesis`)."""
  for i in range(blocks):
    x = ResidualBlock(x.shape[-1], identity_init=True, name=f"latent_block_{i}")(x)
  return x


class Analysis(nn.Module):
  """`stages` stride-2 convolutions (stride 1 when stages == 0) with GDN or residual blocks.

  The analysis transform g_a of Balle et al. 2018 / Minnen et al. 2018, sized for feature maps.
  `blocks` residual blocks follow the last convolution, on the latent grid (a nonlinear stage for a
  transform of one stage, which is otherwise linear); they start as the identity.
  """

  features: int
  out_features: int
  stages: int = 1
  kind: str = "gdn"  # "gdn" or "residual"
  kernel: int = 5
  blocks: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = max(self.stages, 1)
    for i in range(n):
      last = i == n - 1
      x = conv(self.out_features if last else self.features, self.kernel,
               2 if self.stages > 0 else 1)(x)
      if not last:
        x = GDN()(x) if self.kind == "gdn" else ResidualBlock(self.features)(x)
    return latent_blocks(x, self.blocks)


class Synthesis(nn.Module):
  """Mirror of `Analysis`: `stages` stride-2 transposed convolutions with IGDN or residual blocks,
  after `blocks` residual blocks on the latent grid."""

  features: int
  out_features: int
  stages: int = 1
  kind: str = "gdn"
  kernel: int = 5
  blocks: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = latent_blocks(x, self.blocks)
    n = max(self.stages, 1)
    for i in range(n):
      last = i == n - 1
      if i > 0 or self.kind != "gdn":
        x = GDN(inverse=True)(x) if self.kind == "gdn" else ResidualBlock(x.shape[-1])(x)
      feats = self.out_features if last else self.features
      x = (deconv(feats, self.kernel, 2) if self.stages > 0 else conv(feats, self.kernel))(x)
    return x


class HyperAnalysis(nn.Module):
  """h_a of Minnen et al. 2018: conv3 - act - conv5/2 - act - conv5/2 (stages stride-2 layers)."""

  features: int
  stages: int = 2
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    x = self.act(conv(self.features, 3)(y))
    for i in range(self.stages):
      x = conv(self.features, 5, 2)(x)
      if i < self.stages - 1:
        x = self.act(x)
    return x


class HyperSynthesis(nn.Module):
  """h_s of Minnen et al. 2018, ending in `out_features` channels at the latent resolution."""

  features: int
  out_features: int
  stages: int = 2
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = z
    for _ in range(self.stages):
      x = self.act(deconv(self.features, 5, 2)(x))
    return conv(self.out_features, 3)(x)


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads H and W of NHWC `x` at the bottom/right to multiples of `multiple`."""
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph == 0 and pw == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))


def resize_to(x: jax.Array, h: int, w: int) -> jax.Array:
  """Bilinear resize of NHWC x to (h, w); identity when the size already fits (scale ratios that
  are not exactly 2)."""
  if x.shape[1] == h and x.shape[2] == w:
    return x
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear")


def fit_to(x: jax.Array, h: int, w: int) -> jax.Array:
  """NHWC x onto an (h, w) grid that shares its top-left corner: a crop when x is at least that
  large (the padded or ceil-divided grids of the pyramid), else a bilinear resize."""
  if x.shape[1] >= h and x.shape[2] >= w:
    return x[:, :h, :w, :]
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear")
