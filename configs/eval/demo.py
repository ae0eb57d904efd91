r"""The embedded demo's comparison (`make demo`): ShapesNet on a generated shapes set, no ../shared.

`python -m hssc_jax.demo --workdir demo_out` generates the data, trains the learned codecs and then
runs this config; to rerun only the evaluation (resumable):

  python eval.py --config configs/eval/demo.py:root=demo_out --workdir demo_out/eval

Arguments: root (the demo folder holding data/ and runs/), methods ('+'-joined learned codecs whose
runs/<method>_l<lambda> workdirs exist), lambdas ('+'-joined), smoke (2 QPs per anchor).
"""

from pathlib import Path

import ml_collections
from ml_collections import config_dict

from configs.eval import detector as detector_config

FEATURE_QPS = (22, 27, 32, 37, 42)
IMAGE_QPS = (27, 32, 37, 42)
_DEFAULTS = dict(root="demo_out", methods="base+hssc", lambdas="0.05+1", smoke=False)


def get_config(arg=None):
  arg = detector_config.parse_arg(arg, **_DEFAULTS)
  root = Path(arg.root)
  c = ml_collections.ConfigDict()
  c.mode = "codecs"
  c.detector = ml_collections.ConfigDict(dict(name="shapes_net", size="", img_size=128,
                                              weights=""))  # "": the shipped ShapesNet
  c.data = ml_collections.ConfigDict()
  c.data.root = str(root / "data")
  c.data.split = "val"
  c.data.data_dir = str(root / "tfds")
  c.data.max_images = config_dict.placeholder(int)
  c.batch_size = 16
  c.progress = True
  c.verbose = False
  c.feature_anchor = dict(value_range=(), reorder="none",
                          fit_sources=[dict(root=str(root / "data"), split="train")])
  qf, qi = (FEATURE_QPS[1::2], IMAGE_QPS[::2]) if arg.smoke else (FEATURE_QPS, IMAGE_QPS)
  methods = [dict(name="feature anchor (HEVC)", kind="feature_anchor", qps=list(qf), inner="hevc"),
             dict(name="image anchor (HEVC)", kind="image_anchor", qps=list(qi), inner="hevc")]
  for m in filter(None, arg.methods.split("+")):
    workdirs = [str(root / "runs" / f"{m}_l{lm}") for lm in arg.lambdas.split("+")]
    workdirs = [w for w in workdirs if (Path(w) / "final_metrics.json").exists()]
    if workdirs:
      methods.append(dict(name=m, kind="learned", workdirs=workdirs))
  c.methods = methods
  c.anchor_method = "feature anchor (HEVC)"
  c.bd_references = ["image anchor (HEVC)", "base"]
  c.lock()
  return c
