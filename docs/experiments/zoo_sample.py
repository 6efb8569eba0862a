"""What the INT8 studies beside this file share: a zoo model with its real weights and the ImageNet sample
split as the zoo splits it (the first 400 images evaluated, one per class first; the other 100 for
calibration and for every choice). Arguments: [model] [images folder]."""
import sys
import warnings

import torch

from edgecompress import weights
from edgecompress.zoo import imagenet, measure

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
arch = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
root = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/imagenet-sample"
resolved = weights.resolve_weights([arch], None)[arch]
model = weights.load_pretrained(resolved)
subset = imagenet.imagenet_subset(root, imagenet.default_imagenet_classes())
images = imagenet.load_images(subset.paths, weights.preprocessing(resolved))
evaluated, targets, spare = images[:400], torch.tensor(subset.targets[:400]), images[400:]
reference = measure.predict_all(measure.inference_predict(model), evaluated, 50)  # FP32 logits
print(f"{arch} fp32 top-1 {(reference.argmax(1) == targets).float().mean():.4f} on {len(evaluated)} images", flush=True)
