"""Feature codecs: learned codecs (see `base`, `registry`) and the traditional-codec anchors.

Learned codecs, one file per paper (Flax modules; `registry.build_codec` builds them by name):
  hyperprior   HyperpriorCodec: a mean-scale hyperprior per scale (the base codec)
  cross_scale  CrossScaleCodec: the base codec with each scale conditioned on the finer one
  lmfc         LMFCCodec: L-MFC (Liu et al., ICASSP 2023)
  hssc         HSSCCodec: HSSC's SFTNet (Zhang et al., IEEE Trans. Broadcasting 2025) with a
               learned hyperprior coding its compact representation
  hssc_paper   HSSCPaperCodec: HSSC as its paper runs it, SFTNet's compact representation
               quantised to 10 bits, reordered, tiled and coded by HEVC/VVC
  hsc          HSCCodec: HSC (Li et al., 2025)
  mfiba        MFIBACodec: MFIBA (Liu et al., 2025)
  mfiba_cross  CrossScaleMFIBACodec: MFIBA on the cross-scale base codec
  refinement   Refinement: a decoded scale's error coded on its own (L-MFC, HSSC; not a paper's)

Anchors and their parts (host-side numpy; no jit):
  inner        HEVC (libx265), AV1 (SVT-AV1), VVC (vvenc/vvdec): frame <-> elementary stream
  tiling       pyramid <-> one gray frame (near-square grid per scale, scales stacked)
  anchor       FeatureAnchor: 10-bit global min/max quantisation + tiling + inner codec
  image_anchor ImageAnchor: the RGB image as yuv420p through an inner codec
  reorder      HSSC channel reordering (Zhang et al., IEEE Trans. Broadcasting 2025)
"""

from hssc_jax.codecs import inner
from hssc_jax.codecs import registry
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
from hssc_jax.codecs.base import FeatureCodec
from hssc_jax.codecs.cross_scale import CrossScaleCodec
from hssc_jax.codecs.cross_scale import CrossScaleMFIBACodec
from hssc_jax.codecs.hsc import HSCCodec
from hssc_jax.codecs.hssc import HSSCCodec
from hssc_jax.codecs.hssc_paper import HSSCPaperCodec
from hssc_jax.codecs.hyperprior import HyperpriorCodec
from hssc_jax.codecs.lmfc import LMFCCodec
from hssc_jax.codecs.mfiba import MFIBACodec
