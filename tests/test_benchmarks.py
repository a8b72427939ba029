"""The benchmark cases and the run record: every op has quick CPU cases, the new cases set up
and run, and a run names the CPU it ran on (timings are not checked; `dll-ext bench` reports
them)."""
import pytest
import torch

from dll_ext import cpu_info
from dll_ext.benchmark import attention, harness, training_step
from dll_ext.benchmark.harness import Case, Settings, _as_impls, format_table, run_cases
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
    targets = {"causal": 1.2, "padding": 1.3, "padding50": 1.8, "random": 1.0, "dropout": 2.5, "float_mask_grad": 1.5,
               "gqa": 1.0}
    for kind, target in targets.items():
        assert cases[f"{kind}/L512/fwd+bwd"].target == target
    assert cases["mha/self/fwd+bwd"].target == 1.05
    full = cases["causal/L512/fwd+bwd"].flops * 2  # every key computed
    assert cases["padding50/L512/fwd+bwd"].flops == full / 2
    assert cases["dropout/L512/fwd+bwd"].flops == cases["float_mask_grad/L512/fwd+bwd"].flops == full
    assert cases["gqa/L512/fwd+bwd"].flops == full and cases["gqa/L512/fwd+bwd"].memory


@pytest.mark.parametrize("kind", ["padding50", "dropout", "float_mask_grad", "gqa"])
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


def test_cpu_caches_from_sysfs(tmp_path):
    def cache(cpu, index, level, kind, size, shared):
        folder = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (folder / name).write_text(f"{value}\n")

    for cpu in (0, 1):
        cache(cpu, 0, 1, "Data", "48K", cpu)
        cache(cpu, 1, 1, "Instruction", "32K", cpu)
        cache(cpu, 2, 2, "Unified", "2048K", cpu)
        cache(cpu, 3, 3, "Unified", "105M", "0-1")
    caches = cpu_info.cpu_caches(str(tmp_path))
    assert caches == {"L1d": {"size_kib": 48, "instances": 2, "total_kib": 96},
                      "L2": {"size_kib": 2048, "instances": 2, "total_kib": 4096},
                      "L3": {"size_kib": 107520, "instances": 1, "total_kib": 107520}}
    assert cpu_info.format_caches(caches) == "L1d 48 KiB x2, L2 2 MiB x2, L3 105 MiB x1"
    assert cpu_info.cpu_caches(str(tmp_path / "missing")) == {}
    assert cpu_info.format_caches({}) == "unknown"


def test_run_names_the_cpu_in_its_log_table_and_record(monkeypatch):
    monkeypatch.setattr(harness, "steady_state_malloc", lambda: "not changed (test)")
    case = Case(name="tiny", op="test", shape="4x4", setup=lambda: (lambda: torch.ones(4).sum(),) * 2,
                flops=2.0 * 4**3)
    log = []
    run = run_cases([case], "cpu", Settings(warmup=1, rounds=3, min_sample_s=0.001), log=log.append)
    model = cpu_info.cpu_model()
    assert model and log[0].startswith(f"cpu: {model}, {torch.backends.cpu.get_cpu_capability()}")
    assert any("GEMM peak" in line for line in log)
    env = run["environment"]
    assert env["cpu_model"] == model
    assert env["cpu_caches"] == cpu_info.cpu_caches()
    assert run["peak"]["float32"]["gflops"] > 0
    foot = format_table(run).split("\n\n", 1)[1]
    assert model in foot and "GFLOP/s" in foot
