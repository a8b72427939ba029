"""Fuse a torch.nn ConvNet with dll_ext, check it, and save it for the C++ runner.

    python examples/fuse_and_deploy.py --out /tmp/convnet
    build/dll_infer /tmp/convnet/model.pt --input /tmp/convnet/input.pt --output /tmp/convnet/output.pt

The network is the course's small ConvNet (conv-ReLU-pool twice, three linear layers).
"""
import argparse
import os

import torch
import torch.nn as nn

import dll_ext


def course_convnet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="convnet-deploy", help="folder for model.pt, input.pt, output.pt")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(0)
    native = course_convnet().eval()
    fused = dll_ext.nn.fuse_conv_relu(native).eval()
    print(fused)

    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), native(images))
        scripted = torch.jit.script(fused)
        expected = scripted(images)
    scripted.save(os.path.join(args.out, "model.pt"))
    torch.save(images, os.path.join(args.out, "input.pt"))
    torch.save(expected, os.path.join(args.out, "expected.pt"))
    print(f"fused model matches torch.nn; TorchScript model and input written to {args.out}/")


if __name__ == "__main__":
    main()
