"""Per-stage pooled features of Lite0 (224) and Lite2 (260) for each benchmark domain -> $FEWSHOT_XD_CACHE/<domain>.pt"""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, time, random, torch, torch.nn.functional as F
from pathlib import Path
from PIL import Image
import numpy as np
torch.set_num_threads(2)
from episodes.images import pil_to_array
from fewshot.backbones import build_backbone
D = Path(__file__).resolve().parents[3] / "shared" / "data"
domains = {"gtsrb": D/"crossdomain/gtsrb", "chars74k": D/"crossdomain/chars74k", "fruits": D/"crossdomain/fruits",
           "yalefaces": D/"crossdomain/yalefaces", "tinyimagenet": D/"tinyimagenet-fs/test",
           "omniglot": D/"omniglot/images_evaluation"}
def classes(root):
    if root.name == "images_evaluation":
        out = [c for a in sorted(root.iterdir()) for c in sorted(a.iterdir())]
        random.Random(0).shuffle(out); return sorted(out[:100])
    return sorted(p for p in root.iterdir() if p.is_dir())
def stage_ends(variant):
    ends, i = [], 0
    for r in variant.repeats:
        i += r; ends.append(i - 1)
    return ends
def run(net, x, ends):
    feats = []
    x = F.relu6(net._bn0(net._conv_stem(x)))
    for i, b in enumerate(net._blocks):
        x = b(x)
        if i in ends[1:]:   # stages 2..7
            feats.append(x.mean((2, 3)))
    x = F.relu6(net._bn1(net._conv_head(x)))
    feats.append(x.mean((2, 3)))
    return feats
nets = {}
for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite2", 260)):
    net = build_backbone(name, 3, weights="imagenet").eval()
    nets[name] = (net, size, stage_ends(net.variant))
for dom in sys.argv[1:] or domains:
    root = domains[dom]; t = time.time()
    files, labels = [], []
    for k, c in enumerate(classes(root)):
        fs = sorted(p for p in c.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if dom == "tinyimagenet": fs = fs[:60]
        files += fs; labels += [k] * len(fs)
    out = {"labels": torch.tensor(labels), "files": [str(f) for f in files]}
    for name, (net, size, ends) in nets.items():
        mean = torch.tensor(net.mean).view(1,3,1,1); std = torch.tensor(net.std).view(1,3,1,1)
        per = None
        with torch.inference_mode():
            for i in range(0, len(files), 32):
                arr = np.stack([pil_to_array(Image.open(f), size, 3) for f in files[i:i+32]])
                x = (torch.from_numpy(arr).permute(0,3,1,2).float()/255 - mean)/std
                fs = run(net, x.contiguous(memory_format=torch.channels_last), ends)
                per = [f.clone() for f in fs] if per is None else [torch.cat([p, f]) for p, f in zip(per, fs)]
        out[name] = per
    torch.save(out, f"{CACHE}/{dom}.pt")
    print(dom, len(files), f"{time.time()-t:.0f}s", flush=True)
