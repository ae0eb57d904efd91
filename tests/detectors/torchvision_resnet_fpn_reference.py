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


# ------------------------------------------------------------------------------------------------
# Stage 2: RPN, RoI heads and the transform of torchvision's `FasterRCNN`, written after
# torchvision 0.15+ `models/detection/{transform,anchor_utils,rpn,roi_heads,_utils}.py` and
# `ops/{boxes,poolers}.py` with the same module names (so `FasterRCNNReference().state_dict()` has
# the keys of `fasterrcnn_resnet50_fpn().state_dict()`). torchvision's C++ ops are replaced by
# `nms` and `roi_align` below (plain torch, the CPU kernels' semantics).

import math  # pylint: disable=g-import-not-at-top,wrong-import-position


def nms(boxes, scores, iou_threshold):
  """torchvision.ops.nms CPU kernel: stable descending sort, suppress IoU > threshold."""
  order = torch.sort(scores, stable=True, descending=True)[1]
  x1, y1, x2, y2 = boxes.unbind(1)
  areas = (x2 - x1) * (y2 - y1)
  suppressed = torch.zeros(len(boxes), dtype=torch.bool)
  keep = []
  for i in order.tolist():
    if suppressed[i]:
      continue
    keep.append(i)
    xx1 = torch.maximum(x1[i], x1)
    yy1 = torch.maximum(y1[i], y1)
    xx2 = torch.minimum(x2[i], x2)
    yy2 = torch.minimum(y2[i], y2)
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    ovr = inter / (areas[i] + areas - inter)
    suppressed |= ovr > iou_threshold
  return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
  """torchvision `_batched_nms_vanilla`: NMS per group, result sorted by descending score."""
  keep_mask = torch.zeros_like(scores, dtype=torch.bool)
  for class_id in torch.unique(idxs):
    curr = torch.where(idxs == class_id)[0]
    keep_mask[curr[nms(boxes[curr], scores[curr], iou_threshold)]] = True
  keep = torch.where(keep_mask)[0]
  return keep[scores[keep].sort(descending=True, stable=True)[1]]


def _bilinear(feat, y, x):
  """torchvision roi_align `bilinear_interpolate`, vectorised: feat (C, H, W), y, x (M,) ->
  (M, C)."""
  _, h, w = feat.shape
  out_of_range = (y < -1.0) | (y > h) | (x < -1.0) | (x > w)
  y = y.clamp(min=0)
  x = x.clamp(min=0)
  y_low, x_low = y.long(), x.long()
  y_end, x_end = y_low >= h - 1, x_low >= w - 1
  y_high = torch.where(y_end, h - 1, y_low + 1)
  y_low = torch.where(y_end, h - 1, y_low)
  y = torch.where(y_end, y_low.float(), y)
  x_high = torch.where(x_end, w - 1, x_low + 1)
  x_low = torch.where(x_end, w - 1, x_low)
  x = torch.where(x_end, x_low.float(), x)
  ly, lx = y - y_low.float(), x - x_low.float()
  hy, hx = 1.0 - ly, 1.0 - lx
  v = lambda yy, xx: feat[:, yy, xx].T
  out = ((hy * hx)[:, None] * v(y_low, x_low) + (hy * lx)[:, None] * v(y_low, x_high)
         + (ly * hx)[:, None] * v(y_high, x_low) + (ly * lx)[:, None] * v(y_high, x_high))
  return torch.where(out_of_range[:, None], 0.0, out)


def roi_align(feat, boxes, spatial_scale, output_size=7, sampling_ratio=2, aligned=False):
  """torchvision.ops.roi_align of boxes (R, 4) on one image's feat (C, H, W); adaptive sampling
  (sampling_ratio <= 0, ceil(roi size / bins) per box) runs one group of equal grids at a time."""
  c = feat.shape[0]
  if len(boxes) == 0:
    return feat.new_zeros((0, c, output_size, output_size))
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (boxes * spatial_scale - offset).unbind(1)
  roi_w, roi_h = x2 - x1, y2 - y1
  if not aligned:
    roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
  bin_w, bin_h = roi_w / output_size, roi_h / output_size
  if sampling_ratio <= 0:
    gh = torch.ceil(roi_h / output_size).long()
    gw = torch.ceil(roi_w / output_size).long()
    out = feat.new_zeros((len(boxes), c, output_size, output_size))
    for a, b in set(zip(gh.tolist(), gw.tolist())):
      idx = torch.where((gh == a) & (gw == b))[0]
      out[idx] = _roi_align_grid(feat, x1[idx], y1[idx], bin_w[idx], bin_h[idx], output_size, a, b)
    return out
  return _roi_align_grid(feat, x1, y1, bin_w, bin_h, output_size, sampling_ratio, sampling_ratio)


def _roi_align_grid(feat, x1, y1, bin_w, bin_h, output_size, gh, gw):
  """RoIAlign with a gh x gw sampling grid per bin (sum / max(gh gw, 1))."""
  c, r = feat.shape[0], len(x1)
  if gh * gw == 0:
    return feat.new_zeros((r, c, output_size, output_size))
  p = torch.arange(output_size, dtype=torch.float32)
  iy = torch.arange(gh, dtype=torch.float32)
  ix = torch.arange(gw, dtype=torch.float32)
  ys = y1[:, None, None] + p[None, :, None] * bin_h[:, None, None] + (
      (iy[None, None, :] + 0.5) * bin_h[:, None, None] / gh)  # (R, ph, gh)
  xs = x1[:, None, None] + p[None, :, None] * bin_w[:, None, None] + (
      (ix[None, None, :] + 0.5) * bin_w[:, None, None] / gw)
  yy = ys[:, :, :, None, None].expand(r, output_size, gh, output_size, gw)
  xx = xs[:, None, None, :, :].expand(r, output_size, gh, output_size, gw)
  vals = _bilinear(feat, yy.reshape(-1), xx.reshape(-1)).reshape(r, output_size, gh, output_size,
                                                                  gw, c)
  return vals.sum((2, 4)).permute(0, 3, 1, 2) / (gh * gw)


class MultiScaleRoIAlign(nn.Module):
  """torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2) with `LevelMapper`, or
  (`detectron2=True`) detectron2's ROIPooler with ROIAlignV2 and `assign_boxes_to_levels`."""

  def __init__(self, detectron2=False):
    super().__init__()
    self.detectron2 = detectron2

  def forward(self, features, proposals, image_sizes):
    feats = [features[k] for k in ("0", "1", "2", "3")]
    max_h = max(s[0] for s in image_sizes)  # `_setup_scales`: from the unpadded sizes
    scales = [2.0 ** round(math.log2(float(f.shape[-2]) / max_h)) for f in feats]
    if self.detectron2:
      scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
    out = []
    for b, boxes in enumerate(proposals):
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
      s = torch.sqrt(area)
      if self.detectron2:
        lvl = torch.floor(4 + torch.log2(s / 224 + 1e-8))
      else:
        lvl = torch.floor(4 + torch.log2(s / 224) + torch.tensor(1e-6, dtype=s.dtype))
      lvl = (torch.clamp(lvl, min=k_min, max=k_max) - k_min).to(torch.int64)
      res = feats[0].new_zeros((len(boxes), feats[0].shape[1], 7, 7))
      for l, (f, sc) in enumerate(zip(feats, scales)):
        idx = torch.where(lvl == l)[0]
        if self.detectron2:
          res[idx] = roi_align(f[b], boxes[idx], sc, sampling_ratio=0, aligned=True)
        else:
          res[idx] = roi_align(f[b], boxes[idx], sc)
      out.append(res)
    return torch.cat(out)


class BoxCoder:
  """torchvision `det_utils.BoxCoder` (decode only)."""

  def __init__(self, weights, bbox_xform_clip=math.log(1000.0 / 16)):
    self.weights, self.bbox_xform_clip = weights, bbox_xform_clip

  def decode(self, rel_codes, boxes):
    boxes = boxes.to(rel_codes.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = self.weights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
    dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    c_to_c_h = torch.tensor(0.5, dtype=pred_ctr_y.dtype) * pred_h
    c_to_c_w = torch.tensor(0.5, dtype=pred_ctr_x.dtype) * pred_w
    return torch.stack((pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w,
                        pred_ctr_y + c_to_c_h), dim=2).flatten(1)


def clip_boxes_to_image(boxes, size):
  h, w = size
  x = boxes[..., 0::2].clamp(min=0, max=w)
  y = boxes[..., 1::2].clamp(min=0, max=h)
  return torch.stack((x, y), dim=boxes.dim()).reshape(boxes.shape)


def remove_small_boxes(boxes, min_size):
  ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  return torch.where((ws >= min_size) & (hs >= min_size))[0]


def generate_anchors(scales, aspect_ratios):
  """torchvision `AnchorGenerator.generate_anchors` (float32, rounded)."""
  scales = torch.as_tensor(scales, dtype=torch.float32)
  aspect_ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
  h_ratios = torch.sqrt(aspect_ratios)
  w_ratios = 1 / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).view(-1)
  hs = (h_ratios[:, None] * scales[None, :]).view(-1)
  return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(image_size, feature_sizes, detectron2=False):
  """torchvision `AnchorGenerator` for sizes (32,)..(512,), ratios (0.5, 1, 2): (sum HWA, 4);
  or detectron2's `DefaultAnchorGenerator` (unrounded cells, strides 4..64, offset 0)."""
  out = []
  for size, stride, (gh, gw) in zip((32, 64, 128, 256, 512), (4, 8, 16, 32, 64), feature_sizes):
    if detectron2:
      cells = []
      for r in (0.5, 1.0, 2.0):  # generate_cell_anchors
        w = math.sqrt(size * size / r)
        h = r * w
        cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
      base = torch.tensor(cells)
      shifts_x = torch.arange(0, gw * stride, step=stride, dtype=torch.float32)
      shifts_y = torch.arange(0, gh * stride, step=stride, dtype=torch.float32)
      shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
      shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
      shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
      out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
      continue
    base = generate_anchors((size,), (0.5, 1.0, 2.0))
    sh, sw = image_size[0] // gh, image_size[1] // gw
    shifts_x = torch.arange(0, gw, dtype=torch.int32) * sw
    shifts_y = torch.arange(0, gh, dtype=torch.int32) * sh
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
  return torch.cat(out)


class RPNHead(nn.Module):
  """torchvision RPNHead (conv as Conv2dNormActivation without norm: `conv.0.0`)."""

  def __init__(self, in_channels=256, num_anchors=3):
    super().__init__()
    self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                            nn.ReLU(inplace=True)))
    self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
    self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)

  def forward(self, x):
    logits, bbox_reg = [], []
    for feature in x:
      t = self.conv(feature)
      logits.append(self.cls_logits(t))
      bbox_reg.append(self.bbox_pred(t))
    return logits, bbox_reg


def _permute_and_flatten(layer, n, c, h, w):
  layer = layer.view(n, -1, c, h, w).permute(0, 3, 4, 1, 2)
  return layer.reshape(n, -1, c)


class RegionProposalNetwork(nn.Module):
  """torchvision RegionProposalNetwork in eval mode (test settings of fasterrcnn_resnet50_fpn)."""

  def __init__(self, pre_nms_top_n=1000, post_nms_top_n=1000, nms_thresh=0.7, detectron2=False):
    super().__init__()
    self.detectron2 = detectron2  # find_top_rpn_proposals: logits as scores, keep w, h > 0
    self.head = RPNHead()
    self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    self.pre_nms_top_n, self.post_nms_top_n, self.nms_thresh = (pre_nms_top_n, post_nms_top_n,
                                                                nms_thresh)
    self.min_size, self.score_thresh = 1e-3, 0.0

  def forward(self, image_size, image_sizes, features):
    features = list(features.values())
    objectness, pred_bbox_deltas = self.head(features)
    n = features[0].shape[0]
    anchors = grid_anchors(image_size, [f.shape[-2:] for f in features], self.detectron2)
    num_anchors_per_level = [o[0].numel() for o in objectness]
    obj = torch.cat([_permute_and_flatten(o, n, 1, o.shape[2], o.shape[3]) for o in objectness],
                    1).reshape(n, -1)
    deltas = torch.cat([_permute_and_flatten(d, n, 4, d.shape[2], d.shape[3])
                        for d in pred_bbox_deltas], 1).reshape(-1, 4)
    proposals = self.box_coder.decode(deltas, anchors.repeat(n, 1)).view(n, -1, 4)
    levels = torch.cat([torch.full((k,), i, dtype=torch.int64)
                        for i, k in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(obj)
    top_idx, offset = [], 0
    for ob in obj.split(num_anchors_per_level, 1):
      _, idx = ob.topk(min(self.pre_nms_top_n, ob.shape[1]), dim=1)
      top_idx.append(idx + offset)
      offset += ob.shape[1]
    top_idx = torch.cat(top_idx, 1)
    b = torch.arange(n)[:, None]
    obj, levels, proposals = obj[b, top_idx], levels[b, top_idx], proposals[b, top_idx]
    probs = obj if self.detectron2 else torch.sigmoid(obj)
    final_boxes, final_scores = [], []
    for boxes, scores, lvl, img_shape in zip(proposals, probs, levels, image_sizes):
      boxes = clip_boxes_to_image(boxes, img_shape)
      if self.detectron2:
        ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = torch.where((ws > 0) & (hs > 0))[0]
      else:
        keep = remove_small_boxes(boxes, self.min_size)
      boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
      keep = torch.where(scores >= self.score_thresh)[0]
      boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
      keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[:self.post_nms_top_n]
      final_boxes.append(boxes[keep])
      final_scores.append(scores[keep])
    return final_boxes, final_scores


class TwoMLPHead(nn.Module):

  def __init__(self, in_channels=256 * 7 * 7, representation_size=1024):
    super().__init__()
    self.fc6 = nn.Linear(in_channels, representation_size)
    self.fc7 = nn.Linear(representation_size, representation_size)

  def forward(self, x):
    return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class FastRCNNPredictor(nn.Module):

  def __init__(self, in_channels=1024, num_classes=91):
    super().__init__()
    self.cls_score = nn.Linear(in_channels, num_classes)
    self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

  def forward(self, x):
    return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
  """torchvision RoIHeads (boxes only) in eval mode."""

  def __init__(self, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
               detectron2=False):
    super().__init__()
    self.detectron2 = detectron2  # fast_rcnn_inference: 81 classes, background last
    self.box_roi_pool = MultiScaleRoIAlign(detectron2)
    self.box_head = TwoMLPHead()
    self.box_predictor = FastRCNNPredictor(num_classes=81 if detectron2 else 91)
    if detectron2:
      self.box_predictor.bbox_pred = nn.Linear(1024, 80 * 4)
    self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
    self.detections_per_img = detections_per_img

  def forward(self, features, proposals, image_size, image_sizes):
    del image_size
    x = self.box_head(self.box_roi_pool(features, proposals, image_sizes))
    class_logits, box_regression = self.box_predictor(x)
    num_classes = class_logits.shape[-1]
    boxes_per_image = [len(p) for p in proposals]
    pred_boxes = self.box_coder.decode(box_regression, torch.cat(proposals))
    pred_boxes = pred_boxes.reshape(sum(boxes_per_image), -1, 4)
    pred_scores = F.softmax(class_logits, -1)
    results = []
    for boxes, scores, shape in zip(pred_boxes.split(boxes_per_image),
                                    pred_scores.split(boxes_per_image), image_sizes):
      boxes = clip_boxes_to_image(boxes, shape)
      if self.detectron2:
        scores = scores[:, :-1]
        filter_mask = scores > self.score_thresh
        filter_inds = filter_mask.nonzero()
        boxes, scores = boxes[filter_mask], scores[filter_mask]
        keep = batched_nms(boxes, scores, filter_inds[:, 1], self.nms_thresh)
        keep = keep[:self.detections_per_img]
        results.append(dict(boxes=boxes[keep], scores=scores[keep], labels=filter_inds[keep, 1]))
        continue
      labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
      boxes, scores, labels = boxes[:, 1:], scores[:, 1:], labels[:, 1:]
      boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
      inds = torch.where(scores > self.score_thresh)[0]
      boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
      keep = remove_small_boxes(boxes, min_size=1e-2)
      boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
      keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
      results.append(dict(boxes=boxes[keep], scores=scores[keep], labels=labels[keep]))
    return results


def transform(images, min_size=800, max_size=1333):
  """torchvision GeneralizedRCNNTransform (eval): normalise, resize, batch padded to 32.

  images: list of (3, H, W) float32 RGB in [0, 1]. Returns (batch, image_sizes, original sizes)."""
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  out, sizes = [], []
  for image in images:
    image = (image - mean) / std
    im_shape = torch.tensor(image.shape[-2:])
    scale = torch.min(float(min_size) / torch.min(im_shape).to(torch.float32),
                      float(max_size) / torch.max(im_shape).to(torch.float32))
    image = F.interpolate(image[None], size=None, scale_factor=scale.item(), mode="bilinear",
                          recompute_scale_factor=True, align_corners=False)[0]
    out.append(image)
    sizes.append(tuple(image.shape[-2:]))
  h = int(math.ceil(max(s[0] for s in sizes) / 32) * 32)
  w = int(math.ceil(max(s[1] for s in sizes) / 32) * 32)
  batch = out[0].new_zeros((len(out), 3, h, w))
  for i, im in enumerate(out):
    batch[i, :, :im.shape[1], :im.shape[2]].copy_(im)
  return batch, sizes, [tuple(im.shape[-2:]) for im in images]


class FasterRCNNReference(nn.Module):
  """torchvision FasterRCNN (ResNet-50-FPN) in eval mode, from an already-transformed batch."""

  def __init__(self, rpn_post_nms_top_n=1000, detectron2=False, **kw):
    super().__init__()
    self.detectron2 = detectron2
    self.backbone = BackboneWithFPN(**kw)
    self.rpn = RegionProposalNetwork(post_nms_top_n=rpn_post_nms_top_n, detectron2=detectron2)
    self.roi_heads = RoIHeads(detectron2=detectron2)

  def forward(self, batch, image_sizes, original_sizes=None):
    features = self.backbone(batch)
    image_size = tuple(batch.shape[-2:])
    proposals, scores = self.rpn(image_size, image_sizes, features)
    dets = self.roi_heads(features, proposals, image_size, image_sizes)
    if original_sizes is not None:  # GeneralizedRCNNTransform.postprocess / resize_boxes
      for d, s, o in zip(dets, image_sizes, original_sizes):
        rh, rw = (torch.tensor(o[k], dtype=torch.float32) / torch.tensor(s[k], dtype=torch.float32)
                  for k in (0, 1))
        x1, y1, x2, y2 = d["boxes"].unbind(1)
        d["boxes"] = torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=1)
        if self.detectron2:  # detector_postprocess: clip to the output size, drop empty boxes
          d["boxes"] = clip_boxes_to_image(d["boxes"], o)
          b = d["boxes"]
          keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
          for k in ("boxes", "scores", "labels"):
            d[k] = d[k][keep]
    return dict(proposals=proposals, proposal_scores=scores, detections=dets)


def randomize_heads(model: nn.Module, seed: int = 0, obj_gain: float = 0.5,
                    cls_gain: float = 1.0) -> nn.Module:
  """Seeded random RPN and box-head weights that give spread-out objectness, box deltas of a few
  tenths and peaked class scores (so thresholds, NMS and every class path are exercised)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in list(model.rpn.named_parameters()) + list(model.roi_heads.named_parameters()):
      fan_in = p[0].numel() if p.dim() > 1 else 1
      if p.dim() > 1:
        std = (2.0 / fan_in) ** 0.5
        if "cls_logits" in name:
          std = obj_gain / fan_in ** 0.5
        elif "cls_score" in name:
          std = cls_gain / fan_in ** 0.5
        elif "bbox_pred" in name:
          std = 0.3 / fan_in ** 0.5
        p.copy_(torch.randn(p.shape, generator=g) * std)
      else:
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
  return model.eval()
