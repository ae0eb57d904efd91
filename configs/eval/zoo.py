r"""Rate-accuracy of the model zoo against the anchors: `eval.py` mode "codecs".

YOLOv5n (v6.0 COCO weights) on ../shared/data/coco-mini val2017 (79 images, square 640 letterbox):
every quality of every zoo model (`hssc_jax/assets/zoo/*.hsz`, `hssc_jax.zoo`), the HEVC feature
anchor and the HEVC image anchor, each image through a real bitstream.

  python eval.py --config configs/eval/zoo.py --workdir runs/eval_zoo
  python eval.py --config configs/eval/zoo.py:models=base+lmfc,max_images=16 --workdir /tmp/z
  python eval.py --config configs/eval/zoo.py:split=val2017,root=/data/coco --workdir runs/z_full

Arguments: models ("+"-separated zoo names; default all), max_images, split, root (a COCO-format
folder other than coco-mini, e.g. images the project has never seen), image_anchor, anchors
(false: the zoo models only, e.g. to compute their points in a side workdir), qualities
("+"-separated; default every quality of each model), folder (a zoo folder other than the
shipped one, e.g. ablation models exported with `zoo.export(workdir, name, folder)`).
Writes results.csv, results.json, results.md, rd.png and the BD-rate table against the feature
anchor; finished points are kept (a rerun resumes).
"""

from configs.eval import codecs as codecs_config
from configs.eval import detector as detector_config

_DEFAULTS = dict(models="", max_images=0, split="val2017", root="", image_anchor=True,
                 anchors=True, qualities="", folder="")


def get_config(arg=None):
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  arg = detector_config.parse_arg(arg, **_DEFAULTS)
  config = codecs_config.get_config(
      f"max_images={arg.max_images},split={arg.split},image_anchor={arg.image_anchor},runs=/nonexistent")
  folder = arg.folder or None
  names = [n for n in arg.models.split("+") if n] or zoo.names(folder)
  with config.unlocked():
    if arg.root:
      config.data.root = arg.root
    methods = [m for m in config.methods if m["kind"] != "learned" and arg.anchors]
    for name in names:
      info = zoo.read_info(zoo.path_of(name, folder))
      every = range(max(int(info["codec_kwargs"].get("qualities", 0)), 1))
      chosen = [int(q) for q in arg.qualities.split("+") if q] or list(every)
      methods.append(dict(name=name, kind="zoo", model=name, folder=arg.folder,
                          qualities=[q for q in chosen if q in every]))
    config.methods = methods
    if not arg.anchors and methods:
      config.anchor_method = methods[0]["name"]
    # BD-rates against the feature anchor (first), the image anchor and the base codec.
    config.bd_references = ["image anchor (HEVC)", "base"]
  config.lock()
  return config
