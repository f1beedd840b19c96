"""LeNet's test-pass logits for N nets at once: the compiled conv blocks, then batched FC layers."""
from __future__ import annotations

import ctypes
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import LeNet
from . import load

FEATURES = 16 * 5 * 5


def lenet_logits_fn(module: nn.Module, params: dict[str, Tensor],
                    images: Tensor) -> Callable[[Tensor], Tensor] | None:
    """``x -> logits (N, B, classes)`` of the N stacked LeNets in ``params``, or None where the
    compiled kernel does not apply (another module, not float32 on the CPU, no C compiler)."""
    pad = module.features[0].padding[0] if type(module) is LeNet else -1
    tensors = [images, *params.values()]
    if (pad < 0 or images.shape[-1] + 2 * pad != 32
            or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors)):
        return None
    library = load("lenet_features")
    if library is None:
        return None
    kernel = library.lenet_features
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    kernel.argtypes = [pointer, size, ctypes.c_int, pointer, pointer, pointer, pointer, size,
                       pointer, ctypes.c_int]
    kernel.restype = None
    conv = [params[name].contiguous() for name in
            ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias")]
    dense = [(params[f"classifier.{i}.bias"].unsqueeze(1), params[f"classifier.{i}.weight"].mT)
             for i in (1, 3, 5)]
    nets = conv[0].shape[0]

    def logits(x: Tensor) -> Tensor:
        x = F.pad(x, (pad,) * 4).contiguous()
        h = x.new_empty(nets, x.shape[0], FEATURES)
        kernel(x.data_ptr(), x.shape[0], x.shape[1], *(t.data_ptr() for t in conv), nets,
               h.data_ptr(), torch.get_num_threads())
        for i, (bias, weight) in enumerate(dense):
            h = torch.baddbmm(bias, h, weight)
            if i < len(dense) - 1:
                h = h.relu_()
        return h

    return logits
