"""Are the closed loop's in-run readings biased (issue 13/14)? Re-runs the MobileNet-V2 budget-0.7 check from a finished
budget-check run directory (SRC below: its dense model and table), keeps every slim model the loop measures, then
re-times each alone after the run, with its requires_grad/contiguity/subnormal state, and the final model thrice.

    /work/wt/cpulock -x python benchmarks/loop_bias.py   # needs runs/budget_every from benchmarks/budget_check.py
"""
import copy, json, shutil, sys, time
from pathlib import Path
import torch, yaml
import halp.feedback as fb
from halp.recipe import Recipe
from halp.run import run, ratio_meter
src = Path("runs/budget_every/mobilenet_v2_cifar-0.7-0"); out = Path("runs/loopbias")
shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
shutil.copytree(src / "dense", out / "dense"); shutil.copy2(src / "table.json", out / "table.json")
data = yaml.safe_load(Path("benchmarks/recipes/mbv2_digits_latency_check.yaml").read_text())
data = dict(data, out=str(out), prune=dict(data["prune"], target=0.7))
kept = []
orig = fb.DeviceFeedback.ratio_of
def ratio_of(self, widths, build):
    key = self._key(widths)
    new = key not in self.measured
    r = orig(self, widths, build)
    if new:
        kept.append((copy.deepcopy(build(widths)), r))
    return r
fb.DeviceFeedback.ratio_of = ratio_of
report = run(Recipe.from_dict(data), progress=False)
import halp
dense = halp.load_pruned(out / "dense").eval()
x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
meter = ratio_meter(dense, x, 9.0, threads=1, seconds=1.0, min_repeats=40)
tiny = torch.finfo(torch.float32).tiny
rows = []
for m, r in kept:
    m = m.eval()
    sub = sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in m.parameters())
    clone = copy.deepcopy(m)
    with torch.no_grad():
        for p in clone.parameters(): p.data = p.data.clone().contiguous()
    again = [meter(m) for _ in range(2)]
    fresh = meter(clone)
    rows.append({"in_run": r, "after": again, "clone": fresh, "subnormal_params": sub,
                 "requires_grad": any(p.requires_grad for p in m.parameters()),
                 "contiguous": all(p.is_contiguous() for p in m.parameters())})
    print(json.dumps(rows[-1]), flush=True)
final = halp.load_pruned(out / "pruned").eval()
print("final", [round(meter(final), 3) for _ in range(3)], "report", report["latency_ratio"], report["schedule_end_measured_ratio"])
json.dump(rows, open("benchmarks/results/loop_bias.json", "w"), indent=1)
