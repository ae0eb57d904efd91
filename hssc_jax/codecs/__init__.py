"""Feature codecs: learned codecs (see `base`, `registry`) and the traditional-codec anchors.

Anchors and their parts (host-side numpy; no jit):
  inner        HEVC (libx265), AV1 (SVT-AV1), VVC (vvenc/vvdec): frame <-> elementary stream
  tiling       pyramid <-> one gray frame (near-square grid per scale, scales stacked)
  anchor       FeatureAnchor: 10-bit global min/max quantisation + tiling + inner codec
  image_anchor ImageAnchor: the RGB image as yuv420p through an inner codec
  reorder      HSSC channel reordering (Zhang et al., IEEE Trans. Broadcasting 2025)
"""

from hssc_jax.codecs import inner
from hssc_jax.codecs import reorder
from hssc_jax.codecs import tiling
from hssc_jax.codecs.anchor import dequantize
from hssc_jax.codecs.anchor import FeatureAnchor
from hssc_jax.codecs.anchor import fit_range
from hssc_jax.codecs.anchor import quantize
from hssc_jax.codecs.anchor import rate
from hssc_jax.codecs.image_anchor import ImageAnchor
from hssc_jax.codecs.inner import AV1
from hssc_jax.codecs.inner import HEVC
from hssc_jax.codecs.inner import InnerCodec
from hssc_jax.codecs.inner import VVC
