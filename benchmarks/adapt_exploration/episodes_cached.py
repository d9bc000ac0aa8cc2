"""The episodes every exploration script draws (seeded): support and query rows of the cached features."""
import torch
def episodes(labels, ways, shots, queries, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels); classes = labels.unique()
    pools = {int(c): (labels == c).nonzero().flatten() for c in classes}
    ok = [c for c, p in pools.items() if len(p) >= shots + queries]
    for _ in range(n):
        cs = [ok[i] for i in torch.randperm(len(ok), generator=g)[:ways]]
        s, q = [], []
        for c in cs:
            p = pools[c][torch.randperm(len(pools[c]), generator=g)[:shots + queries]]
            s.append(p[:shots]); q.append(p[shots:])
        yield torch.cat(s), torch.cat(q)
