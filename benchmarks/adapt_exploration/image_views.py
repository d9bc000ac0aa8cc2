"""Image-level augmented views (trunk maps computed once per view) vs map-level augmentation for the adapted top."""
import os
import sys, math, time, torch, torch.nn as nn, torch.nn.functional as F, numpy as np
from PIL import Image
import torchvision.transforms as T
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from episodes_cached import episodes
from episodes.images import pil_to_array
from top_variants import CACHE, L0, L2, Top, apply_transform, augment as mapaug, net, probe  # the same top and map crops
def trunk(imgs):
    arr = np.stack([pil_to_array(im, 224, 3) for im in imgs])
    x = (torch.from_numpy(arr).permute(0,3,1,2).float()/255 - 0.5)/0.5
    with torch.inference_mode():
        x = F.relu6(net._bn0(net._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        for b in net._blocks[:11]: x = b(x)
    return x.float().contiguous()
AUGS = {
 "photo": T.Compose([T.ColorJitter(0.4, 0.4, 0.4)]),
 "geo": T.Compose([T.RandomResizedCrop(224, scale=(0.6, 1.0), ratio=(0.8, 1.25)), T.RandomRotation(10)]),
 "both": T.Compose([T.RandomResizedCrop(224, scale=(0.6, 1.0), ratio=(0.8, 1.25)), T.RandomRotation(10), T.ColorJitter(0.4, 0.4, 0.4)]),
}
def adapt(views, ys, ways, g, use_map, steps=40, lr=1e-3, sp=0.1):
    """views (V, S, D, h, w): view 0 the plain image."""
    top = Top(); top.eval(); ref = [p.detach().clone() for p in top.parameters()]
    with torch.no_grad():
        f = F.normalize(top(views[0]), dim=-1); w = torch.stack([f[ys == c].mean(0) for c in range(ways)])
    head = nn.Parameter(F.normalize(w, dim=-1).clone())
    opt = torch.optim.Adam([{"params": top.parameters(), "lr": lr}, {"params": [head], "lr": 1e-2}])
    S = views.shape[1]
    for _ in range(steps):
        pick = torch.randint(0, views.shape[0], (S,), generator=g)
        m = views[pick, torch.arange(S)]
        if use_map: m = mapaug(m, g)
        logits = 10 * F.normalize(top(m), dim=-1) @ F.normalize(head, dim=-1).T
        loss = F.cross_entropy(logits, ys) + sp * sum(((p - r) ** 2).sum() for p, r in zip(top.parameters(), ref))
        opt.zero_grad(); loss.backward(); opt.step()
    return top
def run(dom, shots, n, nviews, variants):
    d = torch.load(f"{CACHE}/{dom}.pt"); maps = torch.load(f"{CACHE}/{dom}.maps.pt")
    labels = d["labels"]; files = d["files"]; R = {}; t0 = time.time(); g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    l2 = F.normalize(d[L2][-1], dim=-1); l0 = F.normalize(d[L0][-1], dim=-1)
    ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
    for s, q in episodes(labels, 5, shots, 10, n):
        def probs(x):
            a, b = apply_transform("power_cl2n", x[s], x[q]); st = probe.fit(a, ys, 5)
            return probe.classify(st, b).softmax(-1)
        acc = lambda p: (p.argmax(-1) == yq).float().mean().item()
        R.setdefault("base", []).append(acc(probs(torch.cat([l0, l2], -1))))
        pil = [Image.open(files[i]) for i in s.tolist()]
        plain = maps[s].float()
        for name in variants:
            kind, use_map = name.split("+") if "+" in name else (name, "")
            if kind == "map":
                views = plain[None]
            else:
                views = torch.stack([plain] + [trunk([AUGS[kind](im.convert("RGB")) for im in pil]) for _ in range(nviews)])
            top = adapt(views, ys, 5, g, use_map == "map" or kind == "map")
            with torch.no_grad():
                f0 = l0.clone(); idx = torch.cat([s, q]); f0[idx] = F.normalize(top(maps[idx].float()), dim=-1)
            R.setdefault(name, []).append(acc(probs(torch.cat([f0, l2], -1))))
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot n {n} views {nviews}: base {100*b.mean():.1f} " +
          " ".join(f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base")
          + f" ({(time.time()-t0)/n:.1f} s/ep)", flush=True)
if __name__ == "__main__":
    doms = sys.argv[1].split(","); shots = int(sys.argv[2]); n = int(sys.argv[3]); nv = int(sys.argv[4]); variants = sys.argv[5].split(",")
    for dom in doms: run(dom, shots, n, nv, variants)
