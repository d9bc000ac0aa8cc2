"""Weight-space interpolation (WiSE-FT) between the pretrained and the adapted top, against replacing and blending probabilities."""
import os, sys, math, time, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from top_variants import CACHE, L0, L2, Top, adapt, apply_transform, episodes, probe  # the same top, its training, the probe
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
            f0 = l0.clone(); idx = torch.cat([s, q]); f0[idx] = F.normalize(top(maps[idx].float()), dim=-1)
        pr = probs(torch.cat([f0, l2], -1))
        out = {"base": pb, "replace": pr, "mix_br": (pb + pr) / 2}
        for a in ALPHAS:
            wt = Top(); wt.eval()
            with torch.no_grad():
                for pw, pa in zip(wt.parameters(), top.parameters()): pw.mul_(1 - a).add_(a * pa)
                fw = l0.clone(); fw[idx] = F.normalize(wt(maps[idx].float()), dim=-1)
            out[f"wise{a}"] = probs(torch.cat([fw, l2], -1))
        for k, p in out.items():
            R.setdefault(k, []).append(acc(p))
    b = torch.tensor(R["base"]); ci = lambda t: 196 * t.std().item() / math.sqrt(len(t))
    print(f"{dom} {shots}-shot steps {steps} lr {lr} sp {sp} n {n}: base {100*b.mean():.1f} " +
          " ".join(f"{k} {100*(torch.tensor(v)-b).mean():+.1f}±{ci(torch.tensor(v)-b):.1f}" for k, v in R.items() if k != "base")
          + f" ({(time.time()-t0)/n:.1f} s/ep)", flush=True)
ALPHAS = [0.3, 0.5, 0.7]
if __name__ == "__main__":
    doms = sys.argv[1].split(","); shots = int(sys.argv[2]); n = int(sys.argv[3]); steps = int(sys.argv[4]); lr = float(sys.argv[5]); sp = float(sys.argv[6])
    for dom in doms: run(dom, shots, n, steps, lr, sp)
