"""One-off exploration behind the README's "368 held-out images" figures (MobileNetV2 static INT8):
FP32 vs FX PTQ configs on the first 368 images of ../shared/data/imagenet-sample, calibrated on the
next 32 (or 128). Run from the repo root: .venv/bin/python docs/experiments/ptq_mobilenet_v2.py [images]
Printed here (2-core AMD EPYC): fp32 84.5%; x86/default 32: 78.5%; x86/custom 32: 81.0%;
x86/default 128: 78.0%; x86/custom 128: 80.7%; fbgemm/default 32: 77.2%.
"""
import sys, time, warnings

import torch
warnings.filterwarnings("ignore")
from edgecompress.quantize import fx
from edgecompress import weights
from edgecompress.zoo import imagenet, measure
torch.set_num_threads(2)
r=weights.resolve_weights(["mobilenet_v2"], None)["mobilenet_v2"]
m=weights.load_pretrained(r)
s=imagenet.imagenet_subset(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/imagenet-sample", imagenet.default_imagenet_classes())
x=imagenet.load_images(s.paths, weights.preprocessing(r))
ev, tg = x[:368], s.targets[:368]
ref=measure.predict_all(measure.inference_predict(m), ev, 50)
print("fp32", measure.topk_accuracy(measure.inference_predict(m), ev, tg, batch_size=50))
for be,qc,n in [("x86","default",32),("x86","custom",32),("x86","default",128),("x86","custom",128),("fbgemm","default",32)]:
    t=time.time()
    q=fx.quantize_static_fx(m, x[368:368+n], backend=be, qconfig=qc, batch_size=32)
    with fx.quant_engine(be):
        out=measure.predict_all(measure.inference_predict(q), ev, 50)
    acc=float((out.argmax(1)==torch.tensor(tg)).float().mean())
    print(be,qc,n, "top1 %.3f"%acc, measure.fidelity(ref,out), "%.0fs"%(time.time()-t))
