"""YOLOv5 letterbox: OpenCV-exact bilinear resize, upstream geometry, and the mapping back."""

import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.detectors import letterbox as lb
from hssc_jax.detectors import yolov5
from hssc_jax.detectors.base import ImageMeta

# cv2.resize(IMG, (w, h), interpolation=cv2.INTER_LINEAR) from opencv-python-headless 5.0.0.93,
# channels first. These sizes exercise the vectorised vertical rounding and the unclamped
# vertical weights at the borders (both differ from a textbook fixed-point bilinear).
IMG = ((np.arange(4 * 5 * 3).reshape(4, 5, 3) * 53 + 7) % 256).astype(np.uint8)
CV2_3x7 = [[[60, 69, 163], [70, 79, 173], [85, 94, 188], [101, 110, 161], [116, 125, 134],
            [131, 140, 149], [141, 150, 159]],
           [[113, 122, 131], [122, 131, 140], [138, 147, 156], [111, 163, 171], [83, 178, 175],
            [99, 193, 93], [109, 203, 41]],
           [[81, 175, 184], [90, 185, 133], [105, 200, 50], [121, 216, 54], [137, 213, 69],
            [152, 82, 85], [161, 0, 94]]]
CV2_8x3 = [[[11, 81, 164, 104, 123, 223, 178, 135], [48, 117, 200, 140, 119, 139, 158, 172],
            [83, 153, 236, 176, 115, 54, 138, 207]],
           [[64, 134, 217, 157, 96, 35, 119, 188], [101, 114, 133, 153, 132, 72, 155, 225],
            [136, 94, 49, 149, 168, 107, 71, 47]],
           [[117, 75, 30, 130, 149, 88, 148, 199], [154, 111, 66, 166, 185, 125, 64, 22],
            [189, 147, 89, 55, 74, 147, 100, 57]]]


@pytest.mark.parametrize("size,expected", [((3, 7), CV2_3x7), ((8, 3), CV2_8x3)])
def test_resize_matches_opencv(size, expected):
  out = lb.resize_linear(IMG, *size)
  np.testing.assert_array_equal(out.transpose(2, 0, 1), np.asarray(expected, np.uint8))


def test_resize_properties():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
  np.testing.assert_array_equal(lb.resize_linear(img, 17, 13), img)
  flat = np.full((9, 5, 3), 77, np.uint8)
  np.testing.assert_array_equal(lb.resize_linear(flat, 23, 31), np.full((31, 23, 3), 77, np.uint8))
  # Exact 2x downscale of half-pixel-centred bilinear = rounded 2x2 mean.
  even = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8).astype(np.int64)
  mean = (even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2] + 2) >> 2
  np.testing.assert_array_equal(lb.resize_linear(even.astype(np.uint8), 6, 4), mean)


@pytest.mark.parametrize("hw", [(480, 640), (427, 640), (640, 427), (500, 375), (333, 500),
                                (612, 612), (100, 1000), (1280, 960)])
def test_geometry_and_round_trip(hw):
  h, w = hw
  img = np.zeros((h, w, 3), np.uint8)
  img[h // 3:2 * h // 3, w // 4:3 * w // 4] = 255
  out, r, (pad_top, pad_left) = lb.letterbox(img, 640)
  assert out.shape == (640, 640, 3) and r == min(640 / h, 640 / w)
  _, nh, nw, top, left = lb.geometry(h, w, 640)
  assert max(nh, nw) == 640 and abs(top - pad_top) <= 0.5 and abs(left - pad_left) <= 0.5
  assert top == round((640 - nh) / 2 - 0.1) and left == round((640 - nw) / 2 - 0.1)
  assert (out[:top] == 114).all() and (out[top + nh:] == 114).all()
  assert (out[:, :left] == 114).all() and (out[:, left + nw:] == 114).all()
  # Boxes in original pixels -> network pixels -> back (upstream scale_coords) is the identity.
  boxes = np.array([[[0, 0, w, h], [w / 4, h / 3, 3 * w / 4, 2 * h / 3], [1, 2, 3, 4]]], np.float32)
  net = boxes * np.float32(r) + np.array([pad_left, pad_top] * 2, np.float32)
  meta = ImageMeta(np.array([[h, w]], np.int32), np.array([r], np.float32),
                   np.array([[pad_top, pad_left]], np.float32))
  back = np.asarray(yolov5.to_original_pixels(net, meta))
  np.testing.assert_allclose(back, boxes, atol=2e-3 * max(h, w) / 640 + 1e-4)
  # Out-of-image boxes are clipped to the image.
  outside = np.array([[[-50, -50, 700, 700]]], np.float32)
  np.testing.assert_allclose(np.asarray(yolov5.to_original_pixels(outside, meta))[0, 0],
                             [0, 0, w, h])


def test_bad_input():
  with pytest.raises(errors.InvalidInputError, match="uint8"):
    lb.letterbox(np.zeros((10, 10, 3), np.float32))
  with pytest.raises(errors.InvalidInputError, match="RGB"):
    lb.letterbox(np.zeros((10, 10), np.uint8))
  with pytest.raises(errors.InvalidInputError, match="at least one image"):
    lb.letterbox_batch([])


def test_reference_network_inputs(shared):
  """The two reference images through our preprocess equal upstream's network input exactly."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ref = shared("reference", "yolov5n-coco-mini")
  val = shared("data", "coco-mini", "val2017")
  det = yolov5.YOLOv5()
  for name in ("000000000139", "000000000802"):
    img = np.asarray(Image.open(val / f"{name}.jpg").convert("RGB"))
    x, meta = det.preprocess([img])
    np.testing.assert_array_equal(x, np.load(ref / f"{name}_input.npy").transpose(0, 2, 3, 1))
    assert tuple(meta.orig_size[0]) == img.shape[:2]
