"""Frozen features, probe fitted on the support plus augmented copies (map-level crops/flips through Lite0's frozen top)."""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, math, time, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from top_variants import Top, probe, L0, L2
from fewshot.model.transforms import apply_transform
from fewshot.inference.adaptation import augmented
from episodes_cached import episodes
torch.set_num_threads(2)
top = Top().eval()
def run(dom, shots, n, copies):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt"); labels = d["labels"]
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1); g = torch.Generator().manual_seed(1)
    R = {}; t0 = time.time()
    for s, q in episodes(labels, 5, shots, 10, n):
        ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
        base_s, base_q = torch.cat([l0[s], l2[s]], -1), torch.cat([l0[q], l2[q]], -1)
        def acc(sx, sy):
            a, b = apply_transform("power_cl2n", sx, base_q); st = probe.fit(a, sy, 5)
            return (probe.classify(st, b).argmax(-1) == yq).float().mean().item()
        R.setdefault("base", []).append(acc(base_s, ys))
        with torch.no_grad():
            m = maps[s].float()
            aug = [F.normalize(top(augmented(m, g)), dim=-1) for _ in range(copies)]
        for k in (2, copies):
            xs = torch.cat([base_s] + [torch.cat([a, l2[s]], -1) for a in aug[:k]]); yy = ys.repeat(k + 1)
            R.setdefault(f"aug{k}", []).append(acc(xs, yy))
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot n {n}: base {100*b.mean():.1f} " + " ".join(f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base") + f" ({(time.time()-t0)/n:.2f} s/ep)", flush=True)
if __name__ == "__main__":
    for dom in sys.argv[1].split(","): run(dom, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
