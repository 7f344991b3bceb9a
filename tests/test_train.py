import dataclasses
import inspect
import math

import pandas as pd
import pytest
import torch

from bench.core.config import IMAGENET, PAPER, RunConfig
from bench.core.errors import BenchError
from bench.core.records import RunStatus
from bench.data.loader import epoch_batches
from bench.results import checkpoints, store
from bench.run.step import prepare_inputs
from bench.run.train import Run, learning_rate, train_one_epoch, train_run
from tests.conftest import CPU, TINY_RUN, epoch_numbers


def test_learning_rate_follows_the_paper_schedule():
    total = PAPER.iterations
    assert learning_rate(PAPER, 0, total, False) == pytest.approx(0.1)
    assert learning_rate(PAPER, 31_999, total, False) == pytest.approx(0.1)
    assert learning_rate(PAPER, 32_000, total, False) == pytest.approx(0.01)
    assert learning_rate(PAPER, 48_000, total, False) == pytest.approx(0.001)
    warm = dataclasses.replace(PAPER, warmup_lr=0.01)
    assert learning_rate(warm, 0, total, True) == pytest.approx(0.01)


def test_learning_rate_follows_the_imagenet_preset_by_epoch():
    per_epoch = 1_281_167 // 256  # ImageNet's training images, whole batches of 256
    total = IMAGENET.epochs * per_epoch
    for epoch, lr in ((1, 0.1), (30, 0.1), (31, 0.01), (60, 0.01), (61, 0.001), (90, 0.001)):
        first, last = (epoch - 1) * per_epoch, epoch * per_epoch - 1  # the epoch's iterations, from 0
        assert learning_rate(IMAGENET, first, total, False) == learning_rate(IMAGENET, last, total, False)
        assert learning_rate(IMAGENET, last, total, False) == pytest.approx(lr), epoch


@pytest.mark.slow
def test_training_logs_every_epoch_and_is_deterministic(tmp_path, tiny_data):
    for name in ("a", "b"):
        assert train_run(TINY_RUN, tiny_data, tmp_path / name, CPU, notify=print) == store.FINISHED
    a, b = epoch_numbers(tmp_path / "a"), epoch_numbers(tmp_path / "b")
    assert a["epoch"].tolist() == [1, 2, 3]
    assert a["iteration"].tolist() == [8, 16, 24]  # 512 images // 64 per batch
    assert a[["train_error", "test_error"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (a["test_top5_error"] >= 0).all() and (a["test_top5_error"] <= a["test_error"]).all()
    assert tiny_data.info.num_classes > 5 and a["test_top5_error"].iloc[0] > 0  # measured, not the 0 of few classes
    pd.testing.assert_frame_equal(a, b)
    assert store.read_json(tmp_path / "a" / store.STATUS)["state"] == store.FINISHED
    config = store.read_json(tmp_path / "a" / store.CONFIG)
    assert RunConfig.from_dict(config["config"]) == TINY_RUN
    assert config["environment"]["torch"] == torch.__version__


@pytest.mark.slow
@pytest.mark.parametrize("augmented", [True, False])
def test_the_first_step_sees_the_stored_images_only_without_augmentation(tmp_path, tiny_data, augmented):
    config = dataclasses.replace(TINY_RUN, epochs=1, augment=augmented)
    seen = []

    def watch(run: Run) -> None:  # the inputs of the first forward in train mode
        run.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()) if run.model.training
                                            and not seen else None)

    train_run(config, tiny_data, tmp_path, CPU, on_start=watch)
    first = epoch_batches(len(tiny_data.train_images), TINY_RUN.batch_size,
                          torch.Generator().manual_seed(TINY_RUN.seed), drop_last=True)[0]
    stored = prepare_inputs(tiny_data.train_images[first], tiny_data.mean, config)
    assert torch.equal(seen[0], stored) is not augmented


@pytest.mark.slow
def test_ctrl_c_mid_epoch_saves_and_resumes_to_the_same_numbers(tmp_path, tiny_data):
    train_run(TINY_RUN, tiny_data, tmp_path / "whole", CPU)

    def interrupt(iteration, total, stats):
        if iteration == 11:  # in the middle of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU, on_step=interrupt)
    status = store.read_json(tmp_path / "cut" / store.STATUS)
    assert (status["state"], status["epoch"], status["iteration"]) == (store.INTERRUPTED, 1, 11)
    assert train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "cut"))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_each_optimizer_trains_and_resumes_a_ctrl_c_exactly(tmp_path, tiny_data, optimizer):
    from bench.core.config import with_optimizer
    from bench.core.modes import OPTIMIZER_CLASSES

    config = with_optimizer(TINY_RUN, optimizer)
    if optimizer == "sgd":  # TINY_RUN's own lr; Adam's is torch's
        assert config.lr == TINY_RUN.lr
    run = Run(config, tiny_data, tmp_path / "probe", CPU)
    assert type(run.optimizer) is OPTIMIZER_CLASSES[optimizer]
    assert run.optimizer.defaults["lr"] == config.lr and run.optimizer.defaults["weight_decay"] == config.weight_decay
    train_run(config, tiny_data, tmp_path / "whole", CPU)
    whole = epoch_numbers(tmp_path / "whole")
    assert whole["train_loss"].iloc[-1] < whole["train_loss"].iloc[0]  # it learns

    def interrupt(iteration, total, stats):
        if iteration == 11:  # in the middle of epoch 2: the optimizer's state must come back with the weights
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tiny_data, tmp_path / "cut", CPU, on_step=interrupt)
    state = checkpoints.load_checkpoint(tmp_path / "cut")["optimizer"]["state"]
    assert {"sgd": "momentum_buffer", "adam": "exp_avg_sq", "adamw": "exp_avg_sq"}[optimizer] in state[0]
    assert train_run(config, tiny_data, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(whole, epoch_numbers(tmp_path / "cut"))


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "size", "stem"), [(18, 224, "imagenet"), (18, 64, "cifar"), (8, 48, "cifar")])
def test_a_run_at_another_input_size_resizes_every_batch_and_picks_the_stem(tmp_path, tiny_data, depth, size,
                                                                            stem):
    config = dataclasses.replace(TINY_RUN, depth=depth, width=2, input_size=size, epochs=1, batch_size=32,
                                 arch="residual")
    shapes = []

    def watch(run: Run) -> None:  # every forward's input, training, evaluation and the diagnostics' alike
        run.model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[1:])))

    assert train_run(config, tiny_data, tmp_path, CPU, on_start=watch) == store.FINISHED
    assert tiny_data.train_images.shape[-1] == 32  # the data stays at its stored size
    assert set(shapes) == {(3, size, size)}
    described = store.read_json(tmp_path / store.CONFIG)
    assert described["model"]["stem"] == stem and described["config"]["input_size"] == size
    assert len(epoch_numbers(tmp_path)) == 1


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, tiny_data):
    train_run(dataclasses.replace(TINY_RUN, epochs=1), tiny_data, tmp_path, CPU)
    with pytest.raises(BenchError, match="different configuration"):
        train_run(dataclasses.replace(TINY_RUN, epochs=1, lr=0.5), tiny_data, tmp_path, CPU)


def test_a_nan_loss_marks_the_run_diverged(tmp_path, tiny_data):
    config = dataclasses.replace(TINY_RUN, lr=1e30, arch="residual")
    assert train_run(config, tiny_data, tmp_path, CPU, notify=lambda m: None) == store.DIVERGED
    status = store.read_json(tmp_path / store.STATUS)
    assert status["state"] == store.DIVERGED and status["diverged_epoch"] == 1
    rows = pd.read_parquet(tmp_path / store.EPOCHS)
    assert len(rows) == 1 and not math.isfinite(rows["train_loss"].iloc[0])


def test_warmup_ends_once_training_error_is_low(tmp_path, tiny_data, monkeypatch):
    config = dataclasses.replace(TINY_RUN, warmup_lr=0.01, warmup_until_error=1.01)  # any error ends it
    monkeypatch.setattr("bench.run.state.WARMUP_WINDOW", 4)
    messages = []
    run = Run(config, tiny_data, tmp_path, CPU, notify=messages.append)
    train_one_epoch(run)
    assert not run.state.warming_up and "lr 0.01 -> 0.05" in messages[0]


@pytest.mark.slow
def test_a_deadline_stops_after_an_epoch_and_the_rerun_continues(tmp_path, tiny_data):
    import time

    assert train_run(TINY_RUN, tiny_data, tmp_path / "chunked", CPU, deadline=time.monotonic()) == store.INTERRUPTED
    assert len(pd.read_parquet(tmp_path / "chunked" / store.EPOCHS)) == 1
    assert train_run(TINY_RUN, tiny_data, tmp_path / "chunked", CPU) == store.FINISHED
    train_run(TINY_RUN, tiny_data, tmp_path / "whole", CPU)
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "chunked"))


@pytest.mark.slow
def test_every_status_of_a_run_is_written_in_order_through_run_status(tmp_path, tiny_data, monkeypatch):
    import time

    written = []
    real_write = store.write_status

    def write_status(directory, state, **fields):
        written.append((inspect.stack()[1].function, state, fields.get("epoch")))
        real_write(directory, state, **fields)

    monkeypatch.setattr(store, "write_status", write_status)
    assert train_run(TINY_RUN, tiny_data, tmp_path, CPU, deadline=time.monotonic()) is RunStatus.INTERRUPTED
    assert train_run(TINY_RUN, tiny_data, tmp_path, CPU) is RunStatus.FINISHED
    assert written == [("status", "running", 0), ("status", "running", 1), ("status", "interrupted", 1),
                       ("status", "running", 1), ("status", "running", 2), ("status", "running", 3),
                       ("status", "finished", 3)]
    assert store.read_status(tmp_path)["state"] == "finished"


@pytest.mark.slow
def test_a_stop_during_evaluation_keeps_the_epoch_and_resumes_to_the_same_numbers(tmp_path, tiny_data,
                                                                                  monkeypatch):
    import bench.run.train

    train_run(TINY_RUN, tiny_data, tmp_path / "whole", CPU)
    real, calls = bench.run.train.evaluate, []

    def evaluate_once_stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the last epoch's evaluation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.run.train, "evaluate", evaluate_once_stopped)
    with pytest.raises(KeyboardInterrupt):
        train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU)
    monkeypatch.setattr(bench.run.train, "evaluate", real)
    assert train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "cut"))


def test_ctrl_c_waits_for_the_end_of_the_iteration(tmp_path, tiny_data):
    import os
    import signal

    def press_ctrl_c(iteration, total, stats):
        if iteration == 5:
            os.kill(os.getpid(), signal.SIGINT)  # lands while the loop runs; acted on at iteration 6's start

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests were started in the background
    with pytest.raises(KeyboardInterrupt):
        train_run(TINY_RUN, tiny_data, tmp_path, CPU, on_step=press_ctrl_c)
    assert store.read_json(tmp_path / store.STATUS)["iteration"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handlers are put back


@pytest.mark.slow
def test_a_second_ctrl_c_saves_nothing_and_the_resume_stays_exact(tmp_path, tiny_data, monkeypatch):
    import os
    import signal

    from bench.core.interrupts import ForcedStop

    train_run(TINY_RUN, tiny_data, tmp_path / "whole", CPU)
    real_step, steps = torch.optim.SGD.step, []

    def step_then_ctrl_c_twice(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 11:  # mid-epoch 2, after the weights moved and before the iteration is counted
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_ctrl_c_twice)
    with pytest.raises(ForcedStop):
        train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert checkpoints.load_checkpoint(tmp_path / "cut")["iteration"] == 8  # the last whole state: epoch 1's end
    assert train_run(TINY_RUN, tiny_data, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "cut"))
