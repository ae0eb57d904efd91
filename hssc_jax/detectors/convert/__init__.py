"""Converters from other frameworks' checkpoints to hssc_jax detector variables."""

from hssc_jax.detectors.convert.ultralytics import convert as convert_ultralytics
from hssc_jax.detectors.convert.ultralytics import load_checkpoint as load_torch_checkpoint
