"""Frozen-feature variants on cached per-stage features: probe settings and extra depths."""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, math, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from episodes_cached import episodes
from fewshot.model.transforms import apply_transform
from fewshot.heads.linear_probe import LinearProbe
torch.set_num_threads(2)
L0, L2 = "efficientnet_lite0", "efficientnet_lite2"
def feats(d, layers):
    return torch.cat([F.normalize(d[m][i], dim=-1) for m in (L0, L2) for i in layers], -1)
VARIANTS = {
    "base": ((-1,), dict()),
    "s10": ((-1,), dict(scale=10.0)),
    "s3": ((-1,), dict(scale=3.0)),
    "st300": ((-1,), dict(steps=300)),
    "s3st300": ((-1,), dict(scale=3.0, steps=300)),
    "wd1e-2": ((-1,), dict(weight_decay=1e-2)),
    "L56h": ((3, 4, -1), dict()),
    "L56h_s3": ((3, 4, -1), dict(scale=3.0)),
}
def run(dom, shots, n):
    d = torch.load(f"{CACHE}/{dom}.pt"); labels = d["labels"]
    X = {k: feats(d, v[0]) for k, v in VARIANTS.items()}
    P = {k: LinearProbe(1, (1,), **v[1]) for k, v in VARIANTS.items()}
    R = {k: [] for k in VARIANTS}
    ys = torch.arange(5).repeat_interleave(shots); yq = torch.arange(5).repeat_interleave(10)
    for s, q in episodes(labels, 5, shots, 10, n):
        for k in VARIANTS:
            a, b = apply_transform("power_cl2n", X[k][s], X[k][q]); st = P[k].fit(a, ys, 5)
            R[k].append((P[k].classify(st, b).argmax(-1) == yq).float().mean().item())
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot n {n}: base {100*b.mean():.1f} " + " ".join(
        f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base"), flush=True)
for shots in (5, 1):
    for dom in ("gtsrb", "chars74k", "fruits", "yalefaces", "tinyimagenet"):
        run(dom, shots, int(sys.argv[1]))
