"""Lite0 stage-5 maps (after block 10; 112 x 14 x 14 at 224 px) per domain -> $FEWSHOT_XD_CACHE/<domain>.maps.pt (float16)"""
import os
CACHE = os.environ.get("FEWSHOT_XD_CACHE", "/tmp/xd")  # written by cache_features.py and cache_maps.py
import sys, time, torch, torch.nn.functional as F, numpy as np
from PIL import Image
torch.set_num_threads(2)
from episodes.images import pil_to_array
from fewshot.backbones import build_backbone
net = build_backbone("efficientnet_lite0", 3, weights="imagenet").eval()
for dom in sys.argv[1:]:
    t = time.time(); d = torch.load(f"{CACHE}/{dom}.pt"); files = d["files"]; out = []
    with torch.inference_mode():
        for i in range(0, len(files), 32):
            arr = np.stack([pil_to_array(Image.open(f), 224, 3) for f in files[i:i+32]])
            x = (torch.from_numpy(arr).permute(0,3,1,2).float()/255 - 0.5)/0.5
            x = F.relu6(net._bn0(net._conv_stem(x.contiguous(memory_format=torch.channels_last))))
            for b in net._blocks[:11]: x = b(x)
            out.append(x.half().contiguous())
    torch.save(torch.cat(out), f"{CACHE}/{dom}.maps.pt"); print(dom, f"{time.time()-t:.0f}s", flush=True)
