"""AdaBN on Lite0's top: BatchNorm statistics of stages 6-7 + head re-estimated from the support's maps (inductive)."""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, math, copy, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from top_variants import Top, probe, L0, L2
from fewshot.model.transforms import apply_transform
from fewshot.inference.adaptation import augmented
from episodes_cached import episodes
torch.set_num_threads(2)
def run(dom, shots, n, mix):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt"); labels = d["labels"]
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1); g = torch.Generator().manual_seed(1)
    R = {}
    for s, q in episodes(labels, 5, shots, 10, n):
        ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
        def acc(x):
            a, b = apply_transform("power_cl2n", x[s], x[q]); st = probe.fit(a, ys, 5)
            return (probe.classify(st, b).argmax(-1) == yq).float().mean().item()
        R.setdefault("base", []).append(acc(torch.cat([l0, l2], -1)))
        top = Top().eval(); ref = copy.deepcopy(top)
        bns = [m for m in top.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            for m in bns: m.reset_running_stats(); m.momentum = None; m.train()
            m_s = maps[s].float()
            for _ in range(4): top(augmented(m_s, g))
            top.eval()
            refs = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
            for w in mix:
                t2 = copy.deepcopy(ref)
                for a, b, c in zip([m for m in t2.modules() if isinstance(m, nn.BatchNorm2d)], bns, refs):
                    a.running_mean.copy_(w * b.running_mean + (1 - w) * c.running_mean)
                    a.running_var.copy_(w * b.running_var + (1 - w) * c.running_var)
                idx = torch.cat([s, q]); f0 = l0.clone(); f0[idx] = F.normalize(t2(maps[idx].float()), dim=-1)
                R.setdefault(f"adabn{w}", []).append(acc(torch.cat([f0, l2], -1)))
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot n {n}: base {100*b.mean():.1f} " + " ".join(f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base"), flush=True)
if __name__ == "__main__":
    for dom in sys.argv[1].split(","): run(dom, int(sys.argv[2]), int(sys.argv[3]), [0.3, 1.0])
