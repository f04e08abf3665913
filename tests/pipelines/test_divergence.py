"""Non-finite steps: skipped without touching the weights or the optimizer, counted, and a run of them ends training."""

import pytest
import torch

from pipelines.divergence import (Diverged, NonFiniteGuard, TrainingDiverged, clear_divergence, raise_if_diverged,
                                  record_divergence)


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)


def step(model, optimizer, guard, gradient: float) -> None:
    for param in model.parameters():
        param.grad = torch.full_like(param, gradient)
    guard.skip_if_nonfinite(optimizer, torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    optimizer.step()


def snapshot(model, optimizer) -> list[torch.Tensor]:
    state = [value for s in optimizer.state.values() for value in s.values()]
    return [t.detach().clone() for t in [*model.parameters(), *state]]


def test_a_nonfinite_step_changes_no_weight_and_no_optimizer_state_and_a_finite_one_trains():
    model, optimizer = model_and_optimizer()
    guard = NonFiniteGuard(limit=3, device="cpu")
    step(model, optimizer, guard, 1.0)
    before = snapshot(model, optimizer)
    for bad in (float("nan"), float("inf"), float("nan")):
        step(model, optimizer, guard, bad)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, optimizer)))
    assert all(int(s["step"]) == 1 for s in optimizer.state.values())  # skipped steps are not counted by Adam
    step(model, optimizer, guard, 1.0)
    assert not any(torch.equal(a, b) for a, b in zip(before[:2], snapshot(model, optimizer)[:2]))
    assert guard.read() == (3, True)


def test_only_steps_in_a_row_give_up_and_a_run_of_them_may_span_reads():
    model, optimizer = model_and_optimizer()
    guard = NonFiniteGuard(limit=3, device="cpu")
    for gradient in (float("nan"), float("nan"), 1.0, float("nan"), float("nan")):
        step(model, optimizer, guard, gradient)
    assert guard.read() == (4, False)  # four skipped, never three in a row
    guard.count_skipped(True)  # DeepSpeed's optimizers report their own skips: the third in a row
    assert guard.read() == (1, True) and guard.total == 5


def test_the_driver_turns_a_workers_record_into_one_line_naming_the_setting(tmp_path):
    raise_if_diverged(str(tmp_path), "finetune", "Lower finetune.lr")  # nothing recorded: nothing raised
    record_divergence(str(tmp_path), Diverged(step=40, limit=25), start="scratch", seed=2)
    with pytest.raises(TrainingDiverged) as raised:
        raise_if_diverged(str(tmp_path), "finetune", "Lower finetune.lr (now 1e+06)")
    message = str(raised.value)
    assert "\n" not in message and raised.value.exit_status == 2
    assert "in the scratch trial (seed 2)" in message and "25 steps in a row by step 40" in message
    assert "(finetune.max_nonfinite_steps)" in message and "Lower finetune.lr (now 1e+06)" in message

    clear_divergence(str(tmp_path))  # what the driver does before training the same output again
    raise_if_diverged(str(tmp_path), "finetune", "")


def test_the_norm_the_guard_reads_clips_when_asked_and_grad_clip_0_leaves_gradients_alone():
    from pipelines.pretrain.step import gradient_norm

    model, _ = model_and_optimizer()
    for param in model.parameters():
        param.grad = torch.full_like(param, 2.0)
    assert float(gradient_norm(model.parameters(), 0.0)) == pytest.approx(2.0 * 10**0.5)  # 10 weights and biases
    # torch's clip to 0 would have zeroed them
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in model.parameters())
    gradient_norm(model.parameters(), 1.0)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])) == pytest.approx(1.0, rel=1e-5)
