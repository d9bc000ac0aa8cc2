"""Simulate adapt='auto' rules on cached maps: 3 folds adapted without what they hold out; rules on held-out accuracy vs log-likelihood."""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, math, time, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from top_variants import adapt, probe, L0, L2
from fewshot.model.transforms import apply_transform
from episodes_cached import episodes
torch.set_num_threads(2)
def logits(x, s, ys, q):
    a, b = apply_transform("power_cl2n", x[s], x[q]); st = probe.fit(a, ys, 5); return probe.classify(st, b)
def run(dom, shots, n):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt"); labels = d["labels"]
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1); g = torch.Generator().manual_seed(1)
    rows = []; t0 = time.time()
    for s, q in episodes(labels, 5, shots, 10, n):
        ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
        base = torch.cat([l0, l2], -1)
        def with_top(top, idx):
            f0 = l0.clone()
            with torch.no_grad(): f0[idx] = F.normalize(top(maps[idx].float()), dim=-1)
            return torch.cat([f0, l2], -1)
        # folds: every class's images split in 3
        fold = torch.arange(len(s)) % shots % 3 if shots >= 3 else torch.arange(len(s)) % shots
        dacc, dll = [], []
        for k in fold.unique():
            held, rest = (fold == k).nonzero().flatten(), (fold != k).nonzero().flatten()
            top, _ = adapt(maps[s[rest]].float(), ys[rest], 5, 40, 1e-3, SP, g)
            lf = logits(base, s[rest], ys[rest], s[held]); la = logits(with_top(top, s), s[rest], ys[rest], s[held])
            yh = ys[held]
            dacc.append((la.argmax(-1) == yh).float() - (lf.argmax(-1) == yh).float())
            dll.append(la.log_softmax(-1)[torch.arange(len(yh)), yh] - lf.log_softmax(-1)[torch.arange(len(yh)), yh])
        dacc, dll = torch.cat(dacc), torch.cat(dll)
        top, _ = adapt(maps[s].float(), ys, 5, 40, 1e-3, SP, g)
        accb = (logits(base, s, ys, q).argmax(-1) == yq).float().mean().item()
        acca = (logits(with_top(top, torch.cat([s, q])), s, ys, q).argmax(-1) == yq).float().mean().item()
        se = lambda t: t.std().item() / math.sqrt(len(t))
        rows.append(dict(base=accb, adapted=acca, gacc=dacc.mean().item(), seacc=se(dacc), gll=dll.mean().item(), sell=se(dll)))
    rules = {"always": lambda r: True, "oracle": lambda r: r["adapted"] > r["base"]}
    for m in (0, 0.5, 1):
        rules[f"acc>{m}se"] = lambda r, m=m: r["gacc"] > 0 and r["gacc"] > m * r["seacc"]
        rules[f"ll>{m}se"] = lambda r, m=m: r["gll"] > m * r["sell"]
    out = []
    for name, rule in rules.items():
        diff = torch.tensor([(r["adapted"] if rule(r) else r["base"]) - r["base"] for r in rows])
        frac = sum(rule(r) for r in rows) / len(rows)
        out.append(f"{name} {100*diff.mean():+.1f}±{196*diff.std().item()/math.sqrt(len(diff)):.1f} ({frac:.0%})")
    print(f"{dom} {shots}-shot n {n} base {100*sum(r['base'] for r in rows)/len(rows):.1f}: " + " | ".join(out), f"({(time.time()-t0)/n:.0f} s/ep)", flush=True)
if __name__ == "__main__":
    SP = float(sys.argv[4])
    for dom in sys.argv[1].split(","): run(dom, int(sys.argv[2]), int(sys.argv[3]))
