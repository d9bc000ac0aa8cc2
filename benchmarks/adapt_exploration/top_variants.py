"""Variants of using an adapted Lite0 top: probe on adapted features, the adapted cosine head, mixtures with the frozen probe, L2-SP."""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, math, copy, time, torch, torch.nn as nn, torch.nn.functional as F
from fewshot.model.transforms import apply_transform
from fewshot.heads.linear_probe import LinearProbe
from fewshot.backbones import build_backbone
torch.set_num_threads(2)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from episodes_cached import episodes
probe = LinearProbe(1, (1,))
net = build_backbone("efficientnet_lite0", 3, weights="imagenet").eval()
class Top(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = copy.deepcopy(net._blocks[11:]); self.conv = copy.deepcopy(net._conv_head); self.bn = copy.deepcopy(net._bn1)
    def forward(self, x):
        for b in self.blocks: x = b(x)
        return F.relu6(self.bn(self.conv(x))).mean((2, 3))
L0, L2 = "efficientnet_lite0", "efficientnet_lite2"
def augment(m, g):
    B = m.shape[0]; out = []
    for i in range(B):
        s = int(torch.randint(10, 15, (1,), generator=g)); y, x = [int(v) for v in torch.randint(0, 15 - s, (2,), generator=g)]
        c = m[i:i+1, :, y:y+s, x:x+s]
        if torch.rand(1, generator=g) < 0.5: c = c.flip(-1)
        out.append(F.interpolate(c, size=14, mode="bilinear", align_corners=False))
    return torch.cat(out)
def adapt(ms, ys, ways, steps, lr, sp, g):
    top = Top(); top.eval()
    ref = [p.detach().clone() for p in top.parameters()]
    with torch.no_grad():
        f = F.normalize(top(ms), dim=-1); w = torch.stack([f[ys == c].mean(0) for c in range(ways)])
    head = nn.Parameter(F.normalize(w, dim=-1).clone())
    opt = torch.optim.Adam([{"params": top.parameters(), "lr": lr}, {"params": [head], "lr": 1e-2}])
    for _ in range(steps):
        logits = 10 * F.normalize(top(augment(ms, g)), dim=-1) @ F.normalize(head, dim=-1).T
        loss = F.cross_entropy(logits, ys)
        if sp: loss = loss + sp * sum(((p - r) ** 2).sum() for p, r in zip(top.parameters(), ref))
        opt.zero_grad(); loss.backward(); opt.step()
    return top, head.detach()
def run(dom, shots, n, steps, lr, sp):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt")
    labels = d["labels"]; R = {}; t0 = time.time(); g = torch.Generator().manual_seed(1)
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1)
    for s, q in episodes(labels, 5, shots, 10, n):
        ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
        def probs(x):
            a, b = apply_transform("power_cl2n", x[s], x[q]); st = probe.fit(a, ys, 5)
            return probe.classify(st, b).softmax(-1)
        acc = lambda p: (p.argmax(-1) == yq).float().mean().item()
        pb = probs(torch.cat([l0, l2], -1))
        top, head = adapt(maps[s].float(), ys, 5, steps, lr, sp, g)
        with torch.no_grad():
            fq = F.normalize(top(maps[q].float()), dim=-1); f0 = l0.clone(); idx = torch.cat([s, q]); f0[idx] = F.normalize(top(maps[idx].float()), dim=-1)
        pr = probs(torch.cat([f0, l2], -1)); ph = (10 * fq @ F.normalize(head, dim=-1).T).softmax(-1)
        for k, p in {"base": pb, "replace": pr, "head": ph, "mix_bh": (pb + ph) / 2, "mix_br": (pb + pr) / 2,
                     "geo_bh": (pb.log() + ph.log())}.items():
            R.setdefault(k, []).append(acc(p))
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot steps {steps} lr {lr} sp {sp} n {n}: base {100*b.mean():.1f} " +
          " ".join(f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base")
          + f" ({(time.time()-t0)/n:.1f} s/ep)", flush=True)
if __name__ == "__main__":
    doms = sys.argv[1].split(","); shots = int(sys.argv[2]); n = int(sys.argv[3]); steps = int(sys.argv[4]); lr = float(sys.argv[5]); sp = float(sys.argv[6])
    for dom in doms: run(dom, shots, n, steps, lr, sp)
