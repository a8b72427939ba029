"""The benchmark cases: every op has quick CPU cases, and the attention cases compare the same
computation (timings are not checked; `dll-ext bench` reports them)."""
import pytest
import torch

from dll_ext.benchmark import attention, training_step
from dll_ext.benchmark.harness import _as_impls
from dll_ext.benchmark.run import OPS, collect_cases

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


def test_attention_cases_cover_the_issue_targets():
    cases = {case.name: case for case in collect_cases("cpu", quick=True, op="attention")}
    targets = {"causal": 1.2, "padding": 1.3, "padding50": 1.8, "random": 1.0, "dropout": 2.5, "float_mask_grad": 1.5}
    for kind, target in targets.items():
        assert cases[f"{kind}/L512/fwd+bwd"].target == target
    assert cases["mha/self/fwd+bwd"].target == 1.05
    full = cases["causal/L512/fwd+bwd"].flops * 2  # every key computed
    assert cases["padding50/L512/fwd+bwd"].flops == full / 2
    assert cases["dropout/L512/fwd+bwd"].flops == cases["float_mask_grad/L512/fwd+bwd"].flops == full


@pytest.mark.parametrize("kind", ["padding50", "dropout", "float_mask_grad"])
def test_new_attention_cases_compare_the_same_attention(kind):
    """Ours and native get the same inputs and the equivalent mask: the gradients of q, k, v
    (and of the float mask) agree, except under dropout, whose masks differ."""
    impls = attention.setup_case(kind, "cpu")
    ours, native = impls.ours(), impls.native()
    assert len(ours) == (4 if kind == "float_mask_grad" else 3)
    if kind != "dropout":
        for a, b in zip(ours, native):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert ours[-1].abs().sum() > 0
