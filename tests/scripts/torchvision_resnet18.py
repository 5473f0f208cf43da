"""torchvision's resnet18 as the --init tests read it (tests/InitTests.fs).

Random weights and non-trivial batch-norm running statistics, in eval mode; writes to OUT_DIR its
state dict (resnet18.pt by torch.save; resnet18.safetensors too where the safetensors module is
installed), a training checkpoint holding it under "state_dict" with a "backbone." prefix
beside other entries (checkpoint.pth), an input (input.f32: float32 (2, 3, 64, 64), C order) and its features before the
classifier (features.f32: float32 (2, 512), after the global average pool).
Usage: /usr/bin/python3 torchvision_resnet18.py OUT_DIR
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1]
torch.manual_seed(0)
try:
    model = torchvision.models.resnet18(weights=None)
except TypeError:  # torchvision before 0.13
    model = torchvision.models.resnet18(pretrained=False)
with torch.no_grad():
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
model.eval()
torch.save(model.state_dict(), os.path.join(out, "resnet18.pt"))
checkpoint = {"backbone." + name: tensor for name, tensor in model.state_dict().items()}
checkpoint["projector.weight"] = torch.ones(8, 512)
torch.save({"epoch": 3, "state_dict": checkpoint}, os.path.join(out, "checkpoint.pth"))
try:
    import safetensors.torch
    safetensors.torch.save_file(model.state_dict(), os.path.join(out, "resnet18.safetensors"))
except ImportError:
    pass
images = torch.randn(2, 3, 64, 64)
model.fc = torch.nn.Identity()
with torch.no_grad():
    features = model(images)
images.numpy().astype("<f4").tofile(os.path.join(out, "input.f32"))
features.numpy().astype("<f4").tofile(os.path.join(out, "features.f32"))
