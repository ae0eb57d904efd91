"""The building blocks of YOLOv5 v6.0 (ultralytics/yolov5 `models/common.py`), NHWC, in Flax.

```
Conv(c, k, s, p)   conv k x k stride s, pad p (default k // 2) -> BatchNorm (eps 1e-3) -> SiLU
                   (fused=True: BN folded into the conv's weights and bias, as upstream's
                   `Model.fuse()` does for inference)
Bottleneck(c)      x + Conv(c, 3)(Conv(c, 1)(x))        (no residual when shortcut=False)
C3(c, n)           Conv(c)(concat[m_n(...m_1(Conv(c/2, 1)(x))), Conv(c/2, 1)(x)])
SPPF(c, 5)         y0 = Conv(c_in/2, 1)(x); y1..y3 = maxpool5(previous); Conv(c)(concat[y0..y3])
```
Parameter names follow the upstream module tree (`cv1`, `cv2`, `cv3`, `m_0`, `conv`, `bn`) so
the converter maps `model.2.m.0.cv1.conv.weight` to `layer_2/m_0/cv1/conv/kernel` directly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-3  # upstream sets BatchNorm2d eps=1e-3 (and momentum 0.03) on every layer
BN_MOMENTUM = 0.97  # flax's momentum is 1 - PyTorch's


class Conv(nn.Module):
  """Conv + BatchNorm + SiLU (upstream `Conv`); `fused` folds the BatchNorm into the conv."""

  features: int
  kernel: int = 1
  stride: int = 1
  padding: int | None = None
  fused: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.kernel // 2 if self.padding is None else self.padding
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                padding=((p, p), (p, p)), use_bias=self.fused, name="conv")(x)
    if not self.fused:
      x = nn.BatchNorm(use_running_average=True, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       name="bn")(x)
    return nn.silu(x)


class Bottleneck(nn.Module):
  """Upstream `Bottleneck` with expansion 1.0 (as used inside C3)."""

  features: int
  shortcut: bool = True
  fused: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = Conv(self.features, 1, fused=self.fused, name="cv1")(x)
    y = Conv(self.features, 3, fused=self.fused, name="cv2")(y)
    return x + y if self.shortcut and x.shape[-1] == self.features else y


class C3(nn.Module):
  """CSP bottleneck with 3 convolutions (upstream `C3`, expansion 0.5)."""

  features: int
  depth: int = 1
  shortcut: bool = True
  fused: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = int(self.features * 0.5)
    y = Conv(hidden, 1, fused=self.fused, name="cv1")(x)
    for j in range(self.depth):
      y = Bottleneck(hidden, self.shortcut, fused=self.fused, name=f"m_{j}")(y)
    z = Conv(hidden, 1, fused=self.fused, name="cv2")(x)
    return Conv(self.features, 1, fused=self.fused, name="cv3")(jnp.concatenate([y, z], -1))


class SPPF(nn.Module):
  """Spatial pyramid pooling, fast (upstream `SPPF`): three chained k x k max-pools."""

  features: int
  pool: int = 5
  fused: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv(x.shape[-1] // 2, 1, fused=self.fused, name="cv1")(x)
    p = self.pool // 2
    pool = lambda t: nn.max_pool(t, (self.pool, self.pool), (1, 1), ((p, p), (p, p)))
    y1 = pool(x)
    y2 = pool(y1)
    y3 = pool(y2)
    return Conv(self.features, 1, fused=self.fused, name="cv2")(jnp.concatenate([x, y1, y2, y3], -1))


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling (upstream `nn.Upsample(None, 2, 'nearest')`)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
