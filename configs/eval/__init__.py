"""Evaluation configs: `python eval.py --config configs/eval/<name>.py[:variant] --workdir DIR`."""
