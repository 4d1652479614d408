"""How fast SSDlite320 learns the generated shapes-voc set from scratch on this CPU (issue 14, item 3).

Trains ``ssdlite320_mobilenet_v3_large`` (``weights=None``, ``weights_backbone=None``, 6 classes +
background) on the default shapes-voc tree (400 train / 100 test images, 320 x 320) with
:func:`halp.detection.train_detector` — the detector's own loss, AdamW (:func:`make_detection_optimizer`),
1 warm-up epoch then cosine, gradient clipping at 10 — and evaluates test mAP@0.5 and COCO mAP
(torchmetrics, faster-coco-eval) after every epoch. Writes the per-epoch history as JSON and the final
weights as a halp checkpoint (for ``detection_postprocess.py``).

    flock -s /tmp/halp-cpu.lock python benchmarks/detection_recipe.py --lr 2e-3 --epochs 8 --batch-size 8
    flock -s /tmp/halp-cpu.lock python benchmarks/detection_recipe.py --lr 3e-3 --bn-momentum 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

import halp.data as data
from halp.checkpoint import save_checkpoint
from halp.detection import create_detector, train_detector
from halp.train import TrainConfig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--bn-momentum", type=float, default=None, help="None: torchvision's (0.03 for SSDlite)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/detection_recipe.json"))
    p.add_argument("--checkpoint", type=Path, default=Path("runs/detection/recipe.ckpt"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    torch.set_num_threads(a.threads)
    train, test, info = data.make_loaders("shapes-voc", a.batch_size, root=a.data_root, eval_batch_size=25)
    torch.manual_seed(0)
    det = create_detector("ssdlite320_mobilenet_v3_large", info.num_classes, bn_momentum=a.bn_momentum)
    cfg = TrainConfig(epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, warmup_epochs=1.0,
                      batch_size=a.batch_size, log_every=2, eval_every=1, grad_clip=10.0)
    res = train_detector(det, train, cfg, test_loader=test, progress=False)
    save_checkpoint(a.checkpoint, det, step=res["step"])
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "history": res["history"],
           "test": res["test"], "seconds": res["seconds"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(res["test"]), f"{res['seconds']:.0f} s")
    return out


if __name__ == "__main__":
    main()
