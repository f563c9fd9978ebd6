"""Train the fd feature classifier for a few steps on DATA and save its float32 weights to OUT.

Run under different ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / thread settings: the weights must not
depend on the CPU's vector width. Args: DATA OUT STEPS THREADS.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bigtrain.data import ShardLoader, StreamSpec  # noqa: E402
from bigtrain.eval.features import CLASSIFIER_INPUT, train_classifier  # noqa: E402

data, out, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
loader = ShardLoader(
    StreamSpec(data, 64, CLASSIFIER_INPUT, "cpu", seed=1234, shuffle_buffer=2048), num_workers=0
)
net, _ = train_classifier(loader, 10, steps, torch.device("cpu"))
torch.save(net.state_dict(), out)
