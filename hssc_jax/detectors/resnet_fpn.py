"""ResNet / ResNeXt + FPN backbone of Faster R-CNN, in Flax (NHWC), split point P2..P5.

ResNet (He et al., 2016, "Deep Residual Learning for Image Recognition", bottleneck block of
Fig. 5 right, Table 1), ResNeXt (Xie et al., 2017, "Aggregated Residual Transformations", the
grouped-convolution form of Fig. 3c), FPN (Lin et al., 2017, "Feature Pyramid Networks for Object
Detection", Sec. 3, Fig. 3), as the backbone of Faster R-CNN (Ren et al., 2015).

```
image (N, H, W, 3), normalised                                   stride
stem      conv 7x7/2 (pad 3) -> FrozenBN -> ReLU -> max-pool 3x3/2 (pad 1)     4
layer1    bottleneck x n1, planes  64                             -> C2  (256 ch)    4
layer2    bottleneck x n2, planes 128, first block stride 2       -> C3  (512 ch)    8
layer3    bottleneck x n3, planes 256, first block stride 2       -> C4 (1024 ch)   16
layer4    bottleneck x n4, planes 512, first block stride 2       -> C5 (2048 ch)   32
  bottleneck(x) = ReLU(BN(conv1x1(ReLU(BN(conv3x3/s, groups g(ReLU(BN(conv1x1(x)))))))) + sc(x))
  width = int(planes * w / 64) * g, output 4 planes; sc = conv1x1/s -> BN on the first block
FPN       L_i = lateral_i(C_i) (1x1, 256, bias);  M5 = L5,  M_i = L_i + nearest_up(M_{i+1})
          P_i = output_i(M_i) (3x3, pad 1, 256, bias)             -> P2..P5 (edge side)
          P6 = max_pool(P5, kernel 1, stride 2) = P5[:, ::2, ::2] (`p6_from_p5`, server side)
```

Architectures (n1..n4, groups g, width per group w): resnet50 (3, 4, 6, 3, g 1, w 64),
resnet101 (3, 4, 23, 3, g 1, w 64), resnext101_32x8d (3, 4, 23, 3, g 32, w 8).

What follows whom:
- torchvision (`models/resnet.py`, `models/detection/backbone_utils.py::resnet_fpn_backbone`,
  `ops/feature_pyramid_network.py`): the stride of a downsampling block sits in the 3x3 conv
  (ResNet "v1.5"), FrozenBatchNorm2d with eps 1e-5, `y = x * scale + (b - rm * scale)` with
  `scale = w * rsqrt(rv + eps)` (same operations, same order), top-down upsampling by
  `F.interpolate(size=lateral size, mode="nearest")`, i.e. source index
  `min(floor(i * float32(in / out)), in - 1)`, which also covers sizes that are not exact doubles
  (inputs that are not multiples of 32).
- detectron2 (`modeling/backbone/resnet.py`, `fpn.py`, `layers/batch_norm.py`): the same network,
  FrozenBatchNorm2d also with eps 1e-5 and the same formula; its MSRA-initialised R-50/R-101
  model-zoo weights put the stride in the first 1x1 conv (`STRIDE_IN_1X1=True`), hence
  `stride_in_1x1`; X-101-32x8d uses `False`. Its FPN upsamples by `scale_factor=2`, which equals
  the rule above whenever the input is a multiple of 32 (detectron2 pads to 32).

Parameters (a single `params` pytree; the frozen BatchNorm statistics are stored there too and
pass through `stop_gradient`), with the torchvision name of each leaf:

```
body/conv1/kernel (7, 7, 3, 64)            backbone.body.conv1.weight (64, 3, 7, 7), OIHW -> HWIO
body/bn1/{scale,bias,mean,var}             backbone.body.bn1.{weight,bias,running_mean,running_var}
body/layer{k}_{j}/conv{m}/kernel           backbone.body.layer{k}.{j}.conv{m}.weight  (m = 1, 2, 3)
body/layer{k}_{j}/bn{m}/...                backbone.body.layer{k}.{j}.bn{m}.*
body/layer{k}_0/downsample_0/kernel        backbone.body.layer{k}.0.downsample.0.weight
body/layer{k}_0/downsample_1/...           backbone.body.layer{k}.0.downsample.1.*
fpn/inner_blocks_{i}/{kernel,bias}         backbone.fpn.inner_blocks.{i}.0.{weight,bias}  (C2..C5)
fpn/layer_blocks_{i}/{kernel,bias}         backbone.fpn.layer_blocks.{i}.0.{weight,bias}
```
(`hssc_jax.detectors.convert.torchvision_frcnn` converts torchvision and detectron2 weights.)

Typical use:

  params = torchvision_frcnn.load_torchvision("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
  pyramid = resnet_fpn.backbone_features(params, images)   # {"p2", "p3", "p4", "p5"} NHWC
  p6 = resnet_fpn.p6_from_p5(pyramid["p5"])                 # on the server, for the RPN
"""

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors

# name -> (blocks per stage, groups, width per group)
ARCHS = {
    "resnet50": ((3, 4, 6, 3), 1, 64),
    "resnet101": ((3, 4, 23, 3), 1, 64),
    "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
}
FEATURE_NAMES = ("p2", "p3", "p4", "p5")
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
FPN_CHANNELS = 256
BN_EPS = 1e-5  # torchvision and detectron2 FrozenBatchNorm2d default


class FrozenBatchNorm(nn.Module):
  """torchvision/detectron2 `FrozenBatchNorm2d`: fixed affine map from stored statistics."""

  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    w = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    b = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    rm = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    rv = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    w, b, rm, rv = (jax.lax.stop_gradient(a) for a in (w, b, rm, rv))
    scale = w * jax.lax.rsqrt(rv + jnp.float32(self.eps))
    return x * scale + (b - rm * scale)


def _conv(features: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False,
          name: str | None = None) -> nn.Conv:
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=bias, name=name)


class Bottleneck(nn.Module):
  """Bottleneck residual block (torchvision `Bottleneck`, detectron2 `BottleneckBlock`)."""

  planes: int
  stride: int = 1
  groups: int = 1
  width_per_group: int = 64
  downsample: bool = False
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = nn.relu(FrozenBatchNorm(name="bn1")(_conv(width, 1, s1, name="conv1")(x)))
    y = nn.relu(FrozenBatchNorm(name="bn2")(_conv(width, 3, s3, self.groups, name="conv2")(y)))
    y = FrozenBatchNorm(name="bn3")(_conv(self.planes * 4, 1, name="conv3")(y))
    if self.downsample:
      x = FrozenBatchNorm(name="downsample_1")(
          _conv(self.planes * 4, 1, self.stride, name="downsample_0")(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet/ResNeXt body up to layer4 (torchvision `IntermediateLayerGetter` of `resnet*`)."""

  blocks: tuple[int, ...] = (3, 4, 6, 3)
  groups: int = 1
  width_per_group: int = 64
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    x = nn.relu(FrozenBatchNorm(name="bn1")(_conv(64, 7, 2, name="conv1")(x)))
    x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    outs, in_ch = [], 64
    for k, (n, planes) in enumerate(zip(self.blocks, (64, 128, 256, 512)), start=1):
      stride = 1 if k == 1 else 2
      for j in range(n):
        x = Bottleneck(planes, stride if j == 0 else 1, self.groups, self.width_per_group,
                       downsample=j == 0 and (stride != 1 or in_ch != planes * 4),
                       stride_in_1x1=self.stride_in_1x1, name=f"layer{k}_{j}")(x)
        in_ch = planes * 4
      outs.append(x)
    return outs


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch `F.interpolate(x, size, mode="nearest")` on NHWC: src = min(floor(i in/out), in-1)."""
  out = x
  for axis, n_out in zip((1, 2), size):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    scale = np.float32(n_in) / np.float32(n_out)  # float32, as ATen's area_pixel_compute_scale
    src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64),
                     n_in - 1)
    out = jnp.take(out, jnp.asarray(src, jnp.int32), axis=axis)
  return out


class FPN(nn.Module):
  """Feature pyramid (torchvision `FeaturePyramidNetwork`, detectron2 `FPN` with fuse "sum")."""

  out_channels: int = FPN_CHANNELS

  @nn.compact
  def __call__(self, feats: list[jax.Array]) -> list[jax.Array]:
    n = len(feats)
    inner = [_conv(self.out_channels, 1, bias=True, name=f"inner_blocks_{i}") for i in range(n)]
    layer = [_conv(self.out_channels, 3, bias=True, name=f"layer_blocks_{i}") for i in range(n)]
    last = inner[-1](feats[-1])
    results = [layer[-1](last)]
    for i in range(n - 2, -1, -1):
      lateral = inner[i](feats[i])
      last = lateral + resize_nearest(last, lateral.shape[1:3])
      results.insert(0, layer[i](last))
    return results


class ResNetFPN(nn.Module):
  """Body + FPN (torchvision `BackboneWithFPN` with `returned_layers=[1, 2, 3, 4]`), no P6."""

  arch: str = "resnet50"
  stride_in_1x1: bool = False
  out_channels: int = FPN_CHANNELS

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if self.arch not in ARCHS:
      raise errors.ConfigError(f"unknown backbone {self.arch!r}; known: {sorted(ARCHS)}")
    blocks, groups, wpg = ARCHS[self.arch]
    c = ResNet(blocks, groups, wpg, self.stride_in_1x1, name="body")(x)
    return dict(zip(FEATURE_NAMES, FPN(self.out_channels, name="fpn")(c)))


def p6_from_p5(p5: jax.Array) -> jax.Array:
  """`LastLevelMaxPool`: max_pool2d(P5, kernel 1, stride 2, pad 0), i.e. every second pixel."""
  return p5[:, ::2, ::2, :]


def arch_of(params: Mapping[str, Any]) -> str:
  """The architecture name of a params pytree (from its block counts and grouped 3x3 kernels)."""
  try:
    body = params["body"]
    blocks = tuple(sum(1 for k in body if k.startswith(f"layer{s}_")) for s in range(1, 5))
    kernel = body["layer1_0"]["conv2"]["kernel"]  # (3, 3, width / groups, width)
  except (KeyError, TypeError) as e:
    raise errors.ConfigError(
        f"not ResNet-FPN params (expected body/layer1_0/conv2/...): {e}") from e
  groups = int(kernel.shape[3]) // int(kernel.shape[2])
  wpg = int(kernel.shape[3]) // groups
  for name, (b, g, w) in ARCHS.items():
    if (b, g, w) == (blocks, groups, wpg):
      return name
  raise errors.ConfigError(
      f"params have blocks {blocks}, groups {groups}, width per group {wpg}: no known backbone")


@functools.partial(jax.jit, static_argnames=("stride_in_1x1",))
def backbone_features(params: Mapping[str, Any], images: jax.Array, *,
                      stride_in_1x1: bool = False) -> dict[str, jax.Array]:
  """Normalised images (N, H, W, 3) -> {"p2", "p3", "p4", "p5"}, each (N, ceil(H/s), ., 256).

  The architecture is read from the params (`arch_of`); `stride_in_1x1=True` for detectron2's
  MSRA R-50/R-101 weights. Image normalisation (mean/std, RGB/BGR) is the caller's.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.InvalidInputError(f"images must be (N, H, W, 3), got {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise errors.InvalidInputError(f"images must be floating point, got {images.dtype}")
  module = ResNetFPN(arch_of(params), stride_in_1x1)
  return module.apply({"params": params}, images.astype(jnp.float32))


def init_params(rng: jax.Array, arch: str = "resnet50") -> dict[str, Any]:
  """Random params (Flax default initialisers, identity BatchNorm) for tests and shape checks."""
  return ResNetFPN(arch).init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32))["params"]


@functools.lru_cache(maxsize=None)
def abstract_params(arch: str = "resnet50") -> dict[str, Any]:
  """Shapes/dtypes of the params of `arch` (no computation; cached, do not modify)."""
  return jax.eval_shape(functools.partial(init_params, arch=arch), jax.random.PRNGKey(0))
