"""Conformance: committed bitstreams decode to their committed outputs.

`tests/conformance/` holds small models of every learned codec (zoo files), bitstreams they wrote in
each container (full and compact) and with each anchor, and the decoded outputs, all made by
`scripts/make_conformance.py`. A change that decodes an existing bitstream differently, or reads a
container version it no longer supports without saying so, fails here.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from hssc_jax import bitstream, errors, zoo
from hssc_jax.codecs import registry
from hssc_jax.codecs.anchor import FeatureAnchor
from hssc_jax.codecs.image_anchor import ImageAnchor

FOLDER = Path(__file__).parent / "conformance"
MANIFEST = json.loads((FOLDER / "MANIFEST.json").read_text())
CASES = MANIFEST["cases"]


def _decoder(case):
  if case["kind"] == "learned":
    model = zoo.load(case["model"], case["quality"], FOLDER)
    codec = model.codec.clone(header=case["header"])
    return lambda data: codec.decompress(model.params, model.tables, data)
  if case["kind"] == "feature_anchor":
    return FeatureAnchor.load(FOLDER / case["model"]).decompress
  return lambda data: {"image": ImageAnchor().decompress(data)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["bitstream"])
def test_committed_bitstreams_decode_to_committed_outputs(case):
  data = (FOLDER / case["bitstream"]).read_bytes()
  out = _decoder(case)(data)
  with np.load(FOLDER / case["output"]) as want:
    assert sorted(out) == sorted(want.files)
    for k in want.files:
      assert out[k].shape == want[k].shape and out[k].dtype == want[k].dtype, k
      np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_the_set_covers_every_codec_container_and_the_current_versions():
  learned = {(c["model"], c["header"]) for c in CASES if c["kind"] == "learned"}
  builtin = ("hyperprior", "lmfc", "hssc", "hsc", "mfiba", "hssc_paper")
  assert set(builtin) <= set(registry.CODECS)
  assert learned == {(m, h) for m in builtin for h in ("full", "compact")}
  assert {c["kind"] for c in CASES} == {"learned", "feature_anchor", "image_anchor"}
  assert (MANIFEST["format_version"], MANIFEST["compact_version"]) == (
      bitstream.FORMAT_VERSION, bitstream.COMPACT_VERSION), (
          "the container version changed: keep reading or refuse the old one, then regenerate "
          "with scripts/make_conformance.py")
  for c in CASES:
    data = (FOLDER / c["bitstream"]).read_bytes()
    assert bitstream.is_compact(data) == (c["header"] == "compact")


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"] == "learned"][:2],
                         ids=lambda c: c["bitstream"])
def test_other_container_versions_are_refused_by_version(case):
  data = bytearray((FOLDER / case["bitstream"]).read_bytes())
  at = 2 if case["header"] == "compact" else 4
  for version in (data[at] - 1, data[at] + 1):
    data[at] = version
    body = bytes(data[:-4])
    with pytest.raises(errors.UnsupportedVersionError):
      _decoder(case)(body + struct.pack(">I", zlib.crc32(body)))
