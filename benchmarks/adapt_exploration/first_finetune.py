"""Per-episode fine-tuning of Lite0's top (blocks 11-15 + head conv) on cached stage-5 maps of the support."""
import os, sys, math, time, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from top_variants import CACHE, L0, L2, Top, apply_transform, augment, episodes, probe  # the same top, map crops, probe
def adapt(ms, ys, ways, steps, lr, aug, g):
    top = Top(); top.eval()  # BN statistics frozen
    with torch.no_grad():
        f = F.normalize(top(ms), dim=-1)
        w = torch.stack([f[ys == c].mean(0) for c in range(ways)])
    head = nn.Parameter(F.normalize(w, dim=-1).clone())
    opt = torch.optim.Adam([{"params": top.parameters(), "lr": lr}, {"params": [head], "lr": 1e-2}])
    for _ in range(steps):
        x = augment(ms, g) if aug else ms
        logits = 10 * F.normalize(top(x), dim=-1) @ F.normalize(head, dim=-1).T
        loss = F.cross_entropy(logits, ys)
        opt.zero_grad(); loss.backward(); opt.step()
    return top
def run(dom, shots, n, steps, lr, aug):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt")
    labels = d["labels"]; base, adapted, concat = [], [], []; t0 = time.time(); g = torch.Generator().manual_seed(1)
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1)
    for s, q in episodes(labels, 5, shots, 10, n):
        ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
        def score(x):
            a, b = apply_transform("power_cl2n", x[s], x[q]); st = probe.fit(a, ys, 5)
            return (probe.classify(st, b).argmax(-1) == yq).float().mean().item()
        base.append(score(torch.cat([l0, l2], -1)))
        top = adapt(maps[s].float(), ys, 5, steps, lr, aug, g)
        with torch.no_grad():
            f0 = l0.clone(); idx = torch.cat([s, q]); f0[idx] = F.normalize(top(maps[idx].float()), dim=-1)
        adapted.append(score(torch.cat([f0, l2], -1)))
        concat.append(score(torch.cat([l0, l2, f0], -1)))
    b, a, c = torch.tensor(base), torch.tensor(adapted), torch.tensor(concat); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot steps {steps} lr {lr}: default {100*b.mean():.1f}±{ci(b):.1f} replace {100*(a-b).mean():+.1f}±{ci(a-b):.1f} "
          f"concat {100*(c-b).mean():+.1f}±{ci(c-b):.1f} ({(time.time()-t0)/n:.1f} s/episode)", flush=True)
if __name__ == "__main__":
    doms = sys.argv[1].split(","); shots = int(sys.argv[2]); n = int(sys.argv[3]); steps = int(sys.argv[4]); lr = float(sys.argv[5]); aug = sys.argv[6] == "1"
    for dom in doms: run(dom, shots, n, steps, lr, aug)
