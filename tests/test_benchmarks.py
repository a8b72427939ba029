"""The benchmark cases run: each quick case of the CPU ops sets up and runs a few calls of ours
and native (timings are not checked; `dll-ext bench` reports them)."""
import pytest
import torch

from dll_ext.benchmark.harness import _as_impls
from dll_ext.benchmark.run import OPS, collect_cases
from dll_ext.benchmark import training_step

pytestmark = pytest.mark.slow


def test_every_op_has_quick_cpu_cases():
    ops = {case.op for case in collect_cases("cpu", quick=True)}
    assert ops == set(OPS)


@pytest.mark.parametrize("name", training_step.PIPELINES)
def test_training_step_cases_compare_the_same_training(name):
    """The dll_ext and the native step train the same model on the same batches: from the same
    seed, their losses agree step after step (classify's digits come with scikit-learn, which
    the test extra installs). To 1e-3 only: nn.LSTM's batch-first output is a transposed view,
    so the char LM's dropout draws the same bits into other positions than on ours."""
    case = next(c for c in training_step.cases() if c.name == f"{name}/step")
    impls = _as_impls(case.setup())
    losses = {}
    for which, run in (("ours", impls.ours), ("native", impls.native)):
        torch.manual_seed(1)
        losses[which] = torch.stack([run() for _ in range(3)])
    torch.testing.assert_close(losses["ours"], losses["native"], rtol=1e-3, atol=0)
