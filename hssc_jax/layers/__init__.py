"""Layers shared by codecs: GDN, residual blocks, analysis/synthesis transforms, resampling."""

from hssc_jax.layers.blocks import Analysis
from hssc_jax.layers.blocks import HyperAnalysis
from hssc_jax.layers.blocks import HyperSynthesis
from hssc_jax.layers.blocks import ResidualBlock
from hssc_jax.layers.blocks import Synthesis
from hssc_jax.layers.blocks import conv
from hssc_jax.layers.blocks import deconv
from hssc_jax.layers.blocks import fit_to
from hssc_jax.layers.blocks import pad_to_multiple
from hssc_jax.layers.blocks import resize_to
from hssc_jax.layers.gdn import GDN
