r"""Rate-accuracy comparison of feature codecs and anchors: `eval.py` mode "codecs".

Default: YOLOv5n (v6.0 COCO weights) on ../shared/data/coco-mini val2017 (79 images, square 640
letterbox), every method of the README table: the HEVC feature anchor and image anchor at the QPs
of ../shared/reference/anchors-coco-mini, and learned codecs trained with fixed lambdas (workdirs
`<runs>/<method>_l<lambda>`, from `python train.py --config configs/<method>.py:lmbda=L`; methods
without a finished run are left out, so a partial set of runs still evaluates). The shipped
variable-rate models are evaluated by `configs/eval/zoo.py`.

  python eval.py --config configs/eval/codecs.py --workdir runs/eval_coco
  python eval.py --config configs/eval/codecs.py:runs=/ckpt,max_images=16 --workdir /tmp/e
  python eval.py --config configs/eval/codecs.py:smoke --workdir /tmp/e     # 4 images, 2 QPs

Writes results.csv, results.json, rd.png and points/<method>/<point>.json (a rerun resumes), and
prints the BD-rate / BD-mAP table against `anchor_method` (the feature anchor by default).
Write your own config for other methods: `methods` is a list of
  {"name", "kind": "learned", "workdirs": [...]}  or  {"name", "kind": "feature_anchor" |
  "image_anchor", "qps": [...], "inner": "hevc" | "av1" | "vvc"}.
"""

from pathlib import Path

from configs.eval import detector as detector_config

SHARED = detector_config.SHARED
REPO = Path(__file__).resolve().parents[2]
LEARNED = ("base", "lmfc", "hssc", "hsc", "mfiba")
FEATURE_QPS = (22, 27, 32, 37, 42)
IMAGE_QPS = (27, 32, 37, 42, 47)

_DEFAULTS = dict(smoke=False, max_images=0, split="val2017", runs=str(REPO / "runs"), lambdas="16",
                 ablations=False, image_anchor=True)


def get_config(arg=None):
  arg = detector_config.parse_arg(arg, **_DEFAULTS)
  config = detector_config.get_config("smoke" if arg.smoke else "")
  with config.unlocked():
    config.mode = "codecs"
    config.data.split = arg.split
    if arg.max_images:
      config.data.max_images = arg.max_images
    # One global 10-bit range over P3-P5 of the 160 shared train images, as the reference anchor.
    config.feature_anchor = dict(
        value_range=(), reorder="none",
        fit_sources=[dict(root=str(SHARED / "data" / d), split="train2017")
                     for d in ("coco-mini", "coco-tiny")])
    qps_f, qps_i = (FEATURE_QPS, IMAGE_QPS) if not arg.smoke else ((32, 42), (37, 47))
    methods = [dict(name="feature anchor (HEVC)", kind="feature_anchor", qps=list(qps_f),
                    inner="hevc")]
    if arg.image_anchor:
      methods.append(dict(name="image anchor (HEVC)", kind="image_anchor", qps=list(qps_i),
                          inner="hevc"))
    names = list(LEARNED) + (["hssc_no_inter", "hssc_no_adaptive"] if arg.ablations else [])
    for name in names:
      workdirs = [str(Path(arg.runs) / f"{name}_l{lm}") for lm in arg.lambdas.split("+")]
      # Finished runs only (train.py writes final_metrics.json after the last checkpoint).
      workdirs = [w for w in workdirs if (Path(w) / "final_metrics.json").exists()]
      if workdirs:
        methods.append(dict(name=name, kind="learned", workdirs=workdirs))
    config.methods = methods
    config.anchor_method = "feature anchor (HEVC)"
  config.lock()
  return config
