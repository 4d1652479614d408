"""Which library models halp can prune exactly: every torchvision classifier, one small variant of every
timm CNN family, torchvision detectors' per-image networks, Ultralytics YOLOv8n / YOLO11n.

For each model: build the checked graph (``halp.build_graph``), prune every prunable group to a random
30-90% (balanced per conv group), and compare the masked and the slim model on the same input (batch-norm
statistics randomised first, so a zeroed channel is not trivially zero). Verdict ``exact``: at least
one group pruned, outputs equal within 1e-4 relative, parameters fall. Results are resumable.

    python benchmarks/zoo_coverage.py                 # everything (about 20 minutes on 2 cores)
    python benchmarks/zoo_coverage.py --only timm     # one source; --models NAME ... for a few
    python benchmarks/zoo_coverage.py --report-only   # rewrite the markdown table from the JSON
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import halp  # noqa: E402
from halp.verify import masked_vs_slim, random_keep, randomize_norms  # noqa: E402

RESULTS = ROOT / "results" / "zoo_coverage.json"
REPORT = ROOT / "results" / "zoo_coverage.md"

#: one small variant of every timm family of convolutional (and conv-attention hybrid) networks
TIMM_FAMILIES: dict[str, str] = {
    "byoanet": "botnet26t_256", "byobnet": "gernet_s", "convmixer": "convmixer_768_32",
    "convnext": "convnext_atto", "cpubone": "cpubone_b0_bfrobust", "cspnet": "cs3darknet_focus_s",
    "cspnext": "cspnext_tiny", "densenet": "densenet121", "dla": "dla46_c", "dpn": "dpn48b",
    "edgenext": "edgenext_xx_small", "efficientformer": "efficientformer_l1",
    "efficientformer_v2": "efficientformerv2_s0", "efficientnet": "efficientnet_b0",
    "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0",
    "efficientvit_msra": "efficientvit_m0", "fasternet": "fasternet_t0", "fastvit": "fastvit_t8",
    "gcvit": "gcvit_xxtiny", "ghostnet": "ghostnet_050", "hardcorenas": "hardcorenas_a",
    "hgnet": "hgnetv2_b0", "hrnet": "hrnet_w18_small", "inception_next": "inception_next_atto",
    "inception_resnet_v2": "inception_resnet_v2", "inception_v3": "inception_v3",
    "inception_v4": "inception_v4", "lcnetv2": "lcnetv2_small", "levit": "levit_128s",
    "lowformer": "lowformer_b0", "mambaout": "mambaout_femto", "maxxvit": "coatnet_pico_rw_224",
    "metaformer": "convformer_s18", "mobilenetv3": "mobilenetv3_small_050",
    "mobilenetv5": "mobilenetv5_300m", "mobilevit": "mobilevit_xxs", "nasnet": "nasnetalarge",
    "nextvit": "nextvit_small", "nfnet": "nf_resnet26", "pnasnet": "pnasnet5large",
    "rdnet": "rdnet_tiny", "regnet": "regnetx_002", "repghost": "repghostnet_050",
    "repvit": "repvit_m0_9", "res2net": "res2net50_14w_8s", "resnest": "resnest14d", "resnet": "resnet18",
    "resnetv2": "resnetv2_18", "rexnet": "rexnet_100", "selecsls": "selecsls42b",
    "senet": "legacy_seresnet18", "shvit": "shvit_s1", "sknet": "skresnet18", "starnet": "starnet_s050",
    "swiftformer": "swiftformer_xs", "tresnet": "tresnet_m", "vgg": "vgg11_bn",
    "visformer": "visformer_tiny", "vovnet": "ese_vovnet19b_dw", "xception": "legacy_xception",
    "xception_aligned": "xception41", "mobilenetv1": "mobilenetv1_100", "mobilenetv2": "mobilenetv2_050",
}
DETECTORS = ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
             "fasterrcnn_resnet50_fpn"]
YOLO = ["yolov8n", "yolo11n"]


class _DetectorNet(nn.Module):
    """The per-image network of a torchvision detector: backbone (+ FPN) and the dense head."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head if hasattr(detector, "head") else detector.rpn.head

    def forward(self, x: torch.Tensor) -> Any:
        feats = list(self.backbone(x).values())
        return self.head(feats)


def detector_network(detector: nn.Module) -> nn.Module:
    return _DetectorNet(detector)


def _yolo(name: str) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(f"{name}.yaml", verbose=False)


def entries(only: str | None) -> list[tuple[str, str, Callable[[], tuple[nn.Module, torch.Tensor]]]]:
    import timm
    import torchvision

    out = []
    if only in (None, "torchvision"):
        for name in torchvision.models.list_models(module=torchvision.models):
            size = 299 if name == "inception_v3" else 224
            out.append(("torchvision", name, lambda n=name, s=size: (
                torchvision.models.get_model(n, weights=None), torch.randn(1, 3, s, s))))
    if only in (None, "timm"):
        for family, name in TIMM_FAMILIES.items():
            def make(n: str = name) -> tuple[nn.Module, torch.Tensor]:
                m = timm.create_model(n, pretrained=False)
                c, h, w = m.pretrained_cfg.get("input_size", (3, 224, 224))
                return m, torch.randn(1, c, h, w)

            out.append(("timm", f"{name} ({family})", make))
    if only in (None, "detection"):
        for name in DETECTORS:
            size = 300 if name.startswith("ssd300") else 320
            out.append(("torchvision detector", name, lambda n=name, s=size: (
                detector_network(torchvision.models.get_model(n, weights=None, weights_backbone=None)),
                torch.randn(1, 3, s, s))))
    if only in (None, "yolo"):
        for name in YOLO:
            out.append(("ultralytics", name, lambda n=name: (_yolo(n), torch.randn(1, 3, 320, 320))))
    return out


def check(make: Callable[[], tuple[nn.Module, torch.Tensor]], seed: int = 1) -> dict[str, Any]:
    model, x = make()
    model.eval()
    randomize_norms(model)
    t0 = time.perf_counter()
    graph = halp.build_graph(model, x)
    build_s = time.perf_counter() - t0
    frozen = [g for g in graph.groups if not g.prunable]
    row: dict[str, Any] = {
        "input": list(x.shape), "groups": len(graph.groups), "prunable": len(graph.prunable_groups),
        "frozen_channels": sum(g.channels for g in frozen),
        "channels": sum(g.channels for g in graph.groups), "build_s": round(build_s, 2),
        "unknown_ops": sorted({op.split(" (")[0] for op in graph.unknown_ops}),
    }
    reasons = collections.Counter(re.sub(r" \(node '[^']*'( in '[^']*')?\)", "", g.reason.split(";")[0])
                                  for g in frozen if g.reason and "reaches the network output" not in g.reason)
    row["top_frozen_reason"] = reasons.most_common(1)[0][0] if reasons else ""
    if not graph.prunable_groups:
        row.update(verdict="no prunable group", stops=row["top_frozen_reason"])
        return row
    keep = random_keep(graph, torch.Generator().manual_seed(seed))
    eq = masked_vs_slim(model, graph, keep, x)
    row.update(rel_diff=eq.relative, params_dense=eq.params_dense, params_slim=eq.params_slim,
               pruned_groups=eq.groups_pruned)
    ok = eq.relative <= 1e-4 and eq.groups_pruned >= 1 and eq.params_slim < eq.params_dense
    row["verdict"] = "exact" if ok else "MISMATCH"
    return row


def report(results: dict[str, dict[str, Any]]) -> str:
    by_source: dict[str, list[tuple[str, dict[str, Any]]]] = collections.defaultdict(list)
    for key, row in results.items():
        by_source[row["source"]].append((key.split("/", 1)[1], row))
    lines = []
    totals = []
    for source, rows in by_source.items():
        n_ok = sum(1 for _, r in rows if r.get("verdict") == "exact")
        totals.append(f"{source}: **{n_ok}/{len(rows)}** exact")
    lines.append("Totals: " + "; ".join(totals) + ".")
    slowest = max(results.items(), key=lambda kv: kv[1].get("build_s", 0))
    r50 = results.get("torchvision/resnet50", {})
    lines.append(f"Graph build (capture + walk + one checking prune): ResNet-50 {r50.get('build_s', '?')} s; "
                 f"slowest {slowest[0]} {slowest[1].get('build_s')} s.")
    lines.append("")
    lines.append("| source | model | input | groups (prunable) | frozen channels | pruned groups | params dense → slim | max rel. diff | build s | verdict / what stops it |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for source, rows in by_source.items():
        for name, r in rows:
            if "error" in r:
                lines.append(f"| {source} | {name} | | | | | | | | error: {r['error'][:120]} |")
                continue
            params = f"{r['params_dense'] / 1e6:.2f}M → {r['params_slim'] / 1e6:.2f}M" if "params_dense" in r else ""
            diff = f"{r['rel_diff']:.1e}" if "rel_diff" in r else ""
            verdict = r["verdict"] if r["verdict"] == "exact" else f"{r['verdict']}: {r.get('stops', '')[:140]}"
            shape = "x".join(str(s) for s in r["input"][2:])
            lines.append(f"| {source} | {name} | {shape} | {r['groups']} ({r['prunable']}) | "
                         f"{r['frozen_channels']}/{r['channels']} | {r.get('pruned_groups', 0)} | {params} | {diff} | "
                         f"{r['build_s']} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["torchvision", "timm", "detection", "yolo"])
    parser.add_argument("--models", nargs="*", help="substrings of model names to run")
    parser.add_argument("--rerun", action="store_true", help="redo models already in the results")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("HALP_THREADS", "2")))
    results: dict[str, dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.report_only:
        todo = [e for e in entries(args.only) if not args.models or any(m in e[1] for m in args.models)]
        for i, (source, name, make) in enumerate(todo):
            key = f"{source}/{name}"
            if key in results and not args.rerun:
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    row = check(make)
                except Exception as e:  # a model that fails is a result, not a crash of the benchmark
                    row = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                           "trace": traceback.format_exc(limit=-3)}
            row["source"] = source
            results[key] = row
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"[{i + 1}/{len(todo)}] {key}: {row.get('verdict', row.get('error'))} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    REPORT.write_text(report(results))
    print(REPORT.read_text().split("\n\n")[0])


if __name__ == "__main__":
    main()
