"""Where a detector's time goes at batch 1: the prunable per-image network vs the fixed pre/postprocessing.

Times, side by side and interleaved (``benchmarks/_timing.compare``), one image through torchvision's
SSD transform (resize + normalise), :class:`halp.detection.DetectorCore` (backbone + head: what HALP
prunes and the latency table covers), the postprocessing (anchors, box decoding, score threshold, top-k,
batched NMS, rescale), and the whole ``detector.eval()(images)`` as a check that the parts add up.
Postprocessing depends on how many anchors pass the score threshold, so a trained detector (``--checkpoint``,
a halp checkpoint of the detector) is the honest case; a random one sends every anchor to NMS.

    flock -x /tmp/halp-cpu.lock python benchmarks/detection_postprocess.py --checkpoint runs/detection/dense-seed0.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare  # noqa: E402

import halp.data as data  # noqa: E402
from halp.checkpoint import load_checkpoint  # noqa: E402
from halp.detection import DetectorCore, create_detector, feature_shapes, postprocess, preprocess  # noqa: E402
from halp.detection.models import INPUT_SIZE  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/detection_postprocess.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ds = data.create("shapes-voc", root=a.data_root, split="test", size=INPUT_SIZE[a.model])
    torch.manual_seed(0)
    det = create_detector(a.model, ds.info.num_classes)
    if a.checkpoint is not None:
        load_checkpoint(a.checkpoint, det)
    det.eval()
    core = DetectorCore(det).eval()
    images = [ds[0][0]]
    batch, original = preprocess(det, images)
    shapes = feature_shapes(core, *batch.tensors.shape[-2:])
    with torch.no_grad():
        raw = core(batch.tensors)
        fns = {
            "preprocess": lambda: preprocess(det, images),
            "network": lambda: core(batch.tensors),
            "postprocess": lambda: postprocess(det, *raw, batch, shapes, original),
            "detector": lambda: det(images),
        }
        t = compare(fns, repeats=a.repeats, warmup=3)
    candidates = int((torch.softmax(raw[0], -1)[0, :, 1:] > det.score_thresh).sum())
    res = {name: {"median_ms": v.median * 1e3, "iqr_ms": v.iqr * 1e3, "n": len(v.samples)} for name, v in t.items()}
    res["postprocess_over_network"] = t["postprocess"].median / t["network"].median
    res["meta"] = {"model": a.model, "checkpoint": str(a.checkpoint) if a.checkpoint else None, "threads": a.threads,
                   "batch": 1, "score_candidates": candidates, "detections": len(t["postprocess"].result[0]["boxes"]),
                   "command": "python " + " ".join(sys.argv)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
