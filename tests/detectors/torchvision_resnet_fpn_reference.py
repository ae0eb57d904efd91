"""A PyTorch reference of torchvision's `resnet_fpn_backbone` (torchvision not needed), for tests.

Written from `torch.nn` after torchvision 0.15+ `models/resnet.py` (`Bottleneck`, `ResNet`),
`ops/misc.py` (`FrozenBatchNorm2d`), `ops/feature_pyramid_network.py` (`FeaturePyramidNetwork`
with `LastLevelMaxPool`) and `models/detection/backbone_utils.py` (`BackboneWithFPN`,
`returned_layers=[1, 2, 3, 4]`), with the same module names, so `FasterRCNNStub().state_dict()`
has the keys of `fasterrcnn_resnet50_fpn().state_dict()` under `backbone.`. `stride_in_1x1`
moves the stride to the first 1x1 conv (detectron2's MSRA blocks).
"""

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
  """torchvision.ops.misc.FrozenBatchNorm2d (eps 1e-5)."""

  def __init__(self, n: int, eps: float = 1e-5):
    super().__init__()
    self.eps = eps
    self.register_buffer("weight", torch.ones(n))
    self.register_buffer("bias", torch.zeros(n))
    self.register_buffer("running_mean", torch.zeros(n))
    self.register_buffer("running_var", torch.ones(n))

  def forward(self, x):
    w = self.weight.reshape(1, -1, 1, 1)
    b = self.bias.reshape(1, -1, 1, 1)
    rv = self.running_var.reshape(1, -1, 1, 1)
    rm = self.running_mean.reshape(1, -1, 1, 1)
    scale = w * (rv + self.eps).rsqrt()
    bias = b - rm * scale
    return x * scale + bias


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
               stride_in_1x1=False):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(inplanes, width, 1, s1, bias=False)
    self.bn1 = FrozenBatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, s3, padding=1, groups=groups, bias=False)
    self.bn2 = FrozenBatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = FrozenBatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    out += identity
    return self.relu(out)


class Body(nn.Module):
  """ResNet up to layer4 (what IntermediateLayerGetter keeps), returning C2..C5."""

  def __init__(self, layers=(3, 4, 6, 3), groups=1, width_per_group=64, stride_in_1x1=False):
    super().__init__()
    self.inplanes = 64
    self.groups, self.base_width, self.stride_in_1x1 = groups, width_per_group, stride_in_1x1
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = FrozenBatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(64, layers[0])
    self.layer2 = self._make_layer(128, layers[1], 2)
    self.layer3 = self._make_layer(256, layers[2], 2)
    self.layer4 = self._make_layer(512, layers[3], 2)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 FrozenBatchNorm2d(planes * 4))
    layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                         self.stride_in_1x1)]
    self.inplanes = planes * 4
    for _ in range(1, blocks):
      layers.append(Bottleneck(self.inplanes, planes, groups=self.groups,
                               base_width=self.base_width, stride_in_1x1=self.stride_in_1x1))
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    c2 = self.layer1(x)
    c3 = self.layer2(c2)
    c4 = self.layer3(c3)
    c5 = self.layer4(c4)
    return [c2, c3, c4, c5]


class FeaturePyramidNetwork(nn.Module):
  """torchvision FPN: inner_blocks/layer_blocks as Conv2dNormActivation (Sequential(conv))."""

  def __init__(self, in_channels_list=(256, 512, 1024, 2048), out_channels=256):
    super().__init__()
    self.inner_blocks = nn.ModuleList(
        nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list)
    self.layer_blocks = nn.ModuleList(
        nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        for _ in in_channels_list)

  def forward(self, x):
    last_inner = self.inner_blocks[-1](x[-1])
    results = [self.layer_blocks[-1](last_inner)]
    for idx in range(len(x) - 2, -1, -1):
      inner_lateral = self.inner_blocks[idx](x[idx])
      inner_top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
      last_inner = inner_lateral + inner_top_down
      results.insert(0, self.layer_blocks[idx](last_inner))
    results.append(F.max_pool2d(results[-1], 1, 2, 0))  # LastLevelMaxPool
    return dict(zip(["0", "1", "2", "3", "pool"], results))


class BackboneWithFPN(nn.Module):

  def __init__(self, layers=(3, 4, 6, 3), groups=1, width_per_group=64, stride_in_1x1=False):
    super().__init__()
    self.body = Body(layers, groups, width_per_group, stride_in_1x1)
    self.fpn = FeaturePyramidNetwork()
    self.out_channels = 256

  def forward(self, x):
    return self.fpn(self.body(x))


class FasterRCNNStub(nn.Module):
  """Only the `backbone` of FasterRCNN, so state_dict keys start with `backbone.`."""

  def __init__(self, **kw):
    super().__init__()
    self.backbone = BackboneWithFPN(**kw)

  def forward(self, x):
    return self.backbone(x)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Seeded random weights: He-normal convs, U(0, 0.5) biases, and BatchNorm weight, bias,
  running mean and variance all random (so the frozen BatchNorm is really exercised), scaled so
  activations stay O(1) through the depth."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.5)
      elif isinstance(m, FrozenBatchNorm2d):
        n = m.weight.numel()
        last = name.endswith("bn3") or name.endswith("downsample.1")
        m.weight.copy_((0.2 if last else 1.0) * (0.5 + torch.rand(n, generator=g)))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
  return model.eval()
