"""bench.run.step: the one training step, what `bench run` trains with and `bench time` times, and its modes."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

import resnet
from bench.core.config import RunConfig, validate
from bench.core.errors import BenchError
from bench.core.modes import check_mode, mode_of
from bench.core.provenance import numerics
from bench.results import reading, store
from bench.run import step as step_module
from bench.run.step import TrainStep, accelerate, device_settings, graphed_predict, predict, sgd
from bench.run.train import train_run
from bench.timing.timing import TIMING_LR, make_phase

CPU = torch.device("cpu")


def _batch(n: int = 8, device: torch.device = CPU) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=generator).to(device), torch.randint(10, (n,), generator=generator).to(device)


def _net(device: torch.device = CPU) -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet.build_model(8, "residual", width=4).to(device)


def test_the_step_is_forward_cross_entropy_backward_sgd() -> None:
    ours, theirs = _net(), _net()
    x, y = _batch()
    step = TrainStep(ours, sgd(ours, 0.1))
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        loss, logits = step(x, y)
        optimizer.zero_grad()
        expected = F.cross_entropy(theirs(x), y)
        expected.backward()
        optimizer.step()
        assert loss.item() == expected.item() and logits.shape == (8, 10)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_gradients_can_be_read_between_backward_and_update() -> None:
    model = _net()
    step = TrainStep(model, sgd(model, 0.1))
    before = copy.deepcopy(model.state_dict())
    step.forward_backward(*_batch())
    assert all(p.grad is not None for p in model.parameters())
    assert torch.equal(model.fc.weight, before["fc.weight"])  # not updated yet
    step.update()
    assert not torch.equal(model.fc.weight, before["fc.weight"])


def test_bench_time_times_the_same_step() -> None:
    timed, trained = _net(), _net()
    x, y = _batch()
    make_phase(timed, "train_step", x, y)()
    TrainStep(trained, sgd(trained, TIMING_LR))(x, y)
    for a, b in zip(timed.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    logits = make_phase(timed, "forward", x, y)()
    assert not timed.training and torch.equal(logits, predict(timed, x, "fp32"))


def test_modes_are_named_once_and_checked() -> None:
    assert (mode_of(False, False), mode_of(True, False), mode_of(False, True)) == ("eager", "compile", "cuda-graph")
    with pytest.raises(BenchError, match="choose one"):
        mode_of(True, True)
    with pytest.raises(BenchError, match="--cuda-graph needs a CUDA device"):
        check_mode("cuda-graph", CPU)
    with pytest.raises(BenchError, match="--cuda-graph needs a CUDA device"):
        validate(RunConfig(device="cpu", cuda_graph=True))
    model = _net()
    assert accelerate(model, "eager", _batch()[0], "fp32") is model


def test_execution_modes_keep_the_run_id() -> None:
    base = RunConfig()
    for change in ({"compile": True}, {"cuda_graph": True}):
        assert dataclasses.replace(base, **change).run_id() == base.run_id()


@pytest.mark.slow
def test_compile_compiles_every_net_of_a_grid(monkeypatch) -> None:
    # All nets share one `forward`; without a reset Dynamo compiles the first
    # recompile_limit (8) and silently runs the rest eager. Eleven distinct nets, each compiled.
    counter = CompileCounter()
    monkeypatch.setattr(step_module, "COMPILE_BACKEND", counter)
    x = torch.randn(2, 3, 8, 8)
    for width in range(1, 12):
        accelerate(resnet.build_model(8, "plain", width=width), "compile", x, "fp32")(x)
        assert counter.frame_count == width
    torch.compiler.reset()


@pytest.mark.slow
def test_a_compiled_forward_trains_and_is_timed(monkeypatch) -> None:
    # torch.compile's module has no truth value (OptimizedModule.__len__ raises TypeError), so a
    # `forward or model` crashed bench run --compile and bench time --compile (scripts/gpu_check.sh on the CPU).
    counter = CompileCounter()
    monkeypatch.setattr(step_module, "COMPILE_BACKEND", counter)
    model = _net()
    x, y = _batch()
    forward = accelerate(model, "compile", x, "fp32")
    loss, _ = TrainStep(model, sgd(model, 0.1), forward=forward)(x, y)
    make_phase(model, "train_step", x, y, mode="compile", forward=forward)()
    assert counter.frame_count == 1 and torch.isfinite(loss)
    torch.compiler.reset()


def test_device_settings_make_the_run_device_current_and_fp32_ieee(monkeypatch) -> None:
    # `bench run` and `bench time` both run under these settings. torch.cuda's
    # device calls are stood in for (no GPU here); the flags are torch's own, settable without a GPU.
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    before = numerics()
    with device_settings(torch.device("cuda", 1)):
        assert calls == [torch.device("cuda", 1)]  # graphs are captured on the current device's streams
        assert numerics() == {"cudnn_benchmark": True, "allow_tf32_matmul": False, "allow_tf32_cudnn": False}
    assert calls == [torch.device("cuda", 1), 0] and numerics() == before
    with device_settings(torch.device("cuda")), device_settings(CPU):  # no index: the current device stays
        assert len(calls) == 2 and not numerics()["allow_tf32_cudnn"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_match_eager_steps() -> None:
    cuda = torch.device("cuda")
    eager, graphed = _net(cuda), _net(cuda)
    x, y = _batch(device=cuda)
    forward = accelerate(graphed, "cuda-graph", x, "fp32")
    # The capture put BatchNorm's running statistics back: both nets start from the same state.
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    steps = TrainStep(eager, sgd(eager, 0.1)), TrainStep(graphed, sgd(graphed, 0.1), forward=forward)
    for _ in range(3):
        (loss_a, _), (loss_b, _) = steps[0](x, y), steps[1](x, y)
        assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-4)
    graphed.eval()
    assert torch.allclose(graphed_predict(graphed, x, "fp32")(x), predict(graphed, x, "fp32"), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_run_with_cuda_graphs_trains_like_eager(tmp_path, tiny_data) -> None:
    config = RunConfig(arch="residual", depth=8, width=4, preset="test", dataset="synthetic", iterations=None,
                       epochs=2, batch_size=64, lr=0.05, device="cuda")
    cuda = torch.device("cuda")
    data = tiny_data.to(cuda)
    for name, run in (("eager", config), ("graph", dataclasses.replace(config, cuda_graph=True))):
        assert train_run(run, data, tmp_path / name, cuda, notify=lambda _: None) == store.FINISHED
    eager, graph = (reading.read_epochs(tmp_path / name) for name in ("eager", "graph"))
    assert graph["train_loss"].tolist() == pytest.approx(eager["train_loss"].tolist(), rel=1e-3)
