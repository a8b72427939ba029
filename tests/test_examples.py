"""The examples run as documented."""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fuse_and_deploy_example(tmp_path):
    script = os.path.join(ROOT, "examples", "fuse_and_deploy.py")
    result = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "fused model matches torch.nn" in result.stdout
    model = torch.jit.load(str(tmp_path / "model.pt"))
    images = torch.load(tmp_path / "input.pt")
    torch.testing.assert_close(model(images), torch.load(tmp_path / "expected.pt"))
    assert "conv2d_relu" in str(model.inlined_graph)
