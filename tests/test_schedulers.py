"""miniai.schedulers against closed forms and against torch's own schedulers (the oracle), plus resume and chaining."""
import io
import math
import sys

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import (ChainedScheduler, ConstantLR, CosineAnnealingLR, LinearLR, OneCycleLR,
                                      ReduceLROnPlateau, SequentialLR)

from miniai.schedulers import (CosineAnnealing, CosineOneCycle, OneCycle, WarmupCosine, cosine_lr, cosine_one_cycle,
                               lr_trajectory, triangular_lr, warmup_cosine_lr)

# Any warning is a failure: torch warns when a scheduler is misused (e.g. stepped before its optimizer).
pytestmark = pytest.mark.filterwarnings("error")

EPS = sys.float_info.epsilon


def make_opt(*lrs: float, kind: str = "sgd") -> torch.optim.Optimizer:
    """An optimizer over one zero parameter per group (no model needed), one group per lr."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs or (0.1,)]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lrs[0] if lrs else 0.1)
    return torch.optim.SGD(groups, lr=lrs[0] if lrs else 0.1, momentum=0.9)


def momentum_of(group: dict) -> float:
    return group["betas"][0] if "betas" in group else group["momentum"]


def seen(scheduler, opt: torch.optim.Optimizer, n: int) -> list[list[tuple[float, float]]]:
    """(lr, momentum or beta1) of every group at steps 0..n-1: what the optimizer ran with (sketch D's lrs_seen).

    The scheduler is stepped n-1 times, not n: torch's OneCycleLR may divide by zero on the step past its last.
    """
    out = []
    for step in range(n):
        if step:
            opt.step()  # first, or torch warns that the scheduler skipped a value
            scheduler.step()
        out.append([(g["lr"], momentum_of(g)) for g in opt.param_groups])
    return out


# ---- pure functions ----

def test_cosine_lr_goes_from_base_to_min_and_continues_back_up():
    assert cosine_lr(0, 10, 1.0, 0.1) == 1.0
    assert cosine_lr(5, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert cosine_lr(15, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(20, 10, 1.0, 0.1) == pytest.approx(1.0)


def test_triangular_lr_min_at_ends_peak_in_the_middle_and_periodic():
    assert [triangular_lr(k, 4, 1.0, 0.2) for k in range(9)] == pytest.approx(
        [0.2, 0.6, 1.0, 0.6, 0.2, 0.6, 1.0, 0.6, 0.2])


def test_cosine_one_cycle_hits_torch_documented_points_and_holds_the_end():
    lr, momentum = cosine_one_cycle(0, 100, 1.0)
    assert (lr, momentum) == pytest.approx((1.0 / 25, 0.95))
    assert cosine_one_cycle(29, 100, 1.0) == pytest.approx((1.0, 0.85))  # phase 1 ends at pct_start*total - 1
    assert cosine_one_cycle(99, 100, 1.0) == pytest.approx((1.0 / 25 / 1e4, 0.95))
    assert cosine_one_cycle(500, 100, 1.0) == cosine_one_cycle(99, 100, 1.0)


# ---- against torch ----

def cosine_tolerance(step: int, T_max: int, scale: float) -> float:
    """How far torch's recursive CosineAnnealingLR honestly drifts from the closed form after `step` steps.

    Going down (step <= T_max) torch multiplies lr - eta_min by ratios < 1, so rounding only accumulates:
    measured <= 1.3e-14 * scale at T_max=1000, so abs 1e-12 holds for scale <= 10. Coming back up, torch restarts
    from lr ~= eta_min, whose rounding error (~EPS*scale) is multiplied by (1+cos)/(1-cos(pi/T_max)), up to
    2/(1-cos(pi/T_max)) ~= (2*T_max/pi)**2: measured 0.3-0.45 * EPS*scale*(2*T_max/pi)**2 for T_max in 200..1000.
    We allow twice that. This is torch's drift; our closed form is within a few eps of the exact value.
    """
    if step <= T_max:
        return 1e-12
    return max(1e-12, 2 * EPS * scale * (2 * T_max / math.pi) ** 2)


@settings(max_examples=25, deadline=None)
@given(T_max=st.integers(1, 300), base_lrs=st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=3),
       eta_fraction=st.floats(0.0, 1.0))
def test_cosine_annealing_matches_torch_within_and_past_T_max(T_max, base_lrs, eta_fraction):
    eta_min = eta_fraction * min(base_lrs)
    n = 3 * T_max + 1
    opt_ours, opt_torch = make_opt(*base_lrs), make_opt(*base_lrs)
    ours = seen(CosineAnnealing(opt_ours, T_max=T_max, eta_min=eta_min), opt_ours, n)
    theirs = seen(CosineAnnealingLR(opt_torch, T_max=T_max, eta_min=eta_min), opt_torch, n)
    for step, (ours_groups, their_groups) in enumerate(zip(ours, theirs)):
        for base, (lr, _), (their_lr, _) in zip(base_lrs, ours_groups, their_groups):
            assert lr == cosine_lr(step, T_max, base, eta_min)
            assert abs(lr - their_lr) <= cosine_tolerance(step, T_max, max(base, eta_min)), f"step {step}"


def test_cosine_annealing_equals_torch_to_1e_12_over_a_typical_run():
    ours = lr_trajectory(CosineAnnealing, make_opt(0.1), 25, T_max=20, eta_min=0.01)
    theirs = lr_trajectory(CosineAnnealingLR, make_opt(0.1), 25, T_max=20, eta_min=0.01)
    assert ours == pytest.approx(theirs, abs=1e-12, rel=0)


one_cycle_configs = st.fixed_dictionaries({
    "total_steps": st.integers(1, 150),
    "pct_start": st.floats(0.0, 1.0),
    "anneal_strategy": st.sampled_from(["cos", "linear"]),
    "three_phase": st.booleans(),
    "div_factor": st.floats(1.0, 100.0),
    "final_div_factor": st.floats(1.0, 1e5),
    "base_momentum": st.floats(0.5, 0.9),
    "max_momentum": st.floats(0.9, 0.99),
})


@settings(max_examples=60, deadline=None)
@given(config=one_cycle_configs, max_lrs=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=3),
       kind=st.sampled_from(["sgd", "adamw"]), shared_max_lr=st.booleans())
def test_cosine_one_cycle_matches_torch_lr_and_momentum_at_every_step(config, max_lrs, kind, shared_max_lr):
    # torch divides by zero when the warmup phase has length 0; that case has its own test below.
    assume(float(config["pct_start"] * config["total_steps"]) != 1.0)
    max_lr = max_lrs[0] if shared_max_lr else max_lrs
    opt_ours, opt_torch = make_opt(*max_lrs, kind=kind), make_opt(*max_lrs, kind=kind)
    ours = seen(CosineOneCycle(opt_ours, max_lr, **config), opt_ours, config["total_steps"])
    theirs = seen(OneCycleLR(opt_torch, max_lr, **config), opt_torch, config["total_steps"])
    for step, (ours_groups, their_groups) in enumerate(zip(ours, theirs)):
        for (lr, momentum), (their_lr, their_momentum) in zip(ours_groups, their_groups):
            assert lr == pytest.approx(their_lr, abs=1e-9, rel=0), f"lr at step {step}"
            assert momentum == pytest.approx(their_momentum, abs=1e-9, rel=0), f"momentum at step {step}"
    keys = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
    assert [{k: g[k] for k in keys} for g in opt_ours.param_groups] == \
           [{k: g[k] for k in keys} for g in opt_torch.param_groups]


def test_cosine_one_cycle_past_total_steps_holds_the_final_lr_where_torch_overshoots_and_raises():
    for strategy in ("cos", "linear"):
        opt = make_opt(1.0)
        scheduler = CosineOneCycle(opt, max_lr=1.0, total_steps=10, anneal_strategy=strategy)
        trajectory = seen(scheduler, opt, 30)
        final = trajectory[9][0]
        assert final == pytest.approx((1.0 / 25 / 1e4, 0.95))
        assert all(step[0] == final for step in trajectory[10:])
        assert scheduler.get_last_lr() == [final[0]]
    # Why we clamp: after its last step torch leaves a linear anneal's lr below min_lr (here negative), then raises.
    opt = make_opt(1.0)
    torch_scheduler = OneCycleLR(opt, max_lr=1.0, total_steps=10, anneal_strategy="linear")
    seen(torch_scheduler, opt, 11)  # last_epoch 10 = total_steps: one step extrapolated
    assert opt.param_groups[0]["lr"] < 0
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        torch_scheduler.step()


def test_cosine_one_cycle_with_a_one_step_warmup_starts_at_max_lr_where_torch_divides_by_zero():
    with pytest.raises(ZeroDivisionError):
        OneCycleLR(make_opt(1.0), max_lr=1.0, total_steps=10, pct_start=0.1)
    opt = make_opt(1.0)
    CosineOneCycle(opt, max_lr=1.0, total_steps=10, pct_start=0.1)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (1.0, 0.85)


# ---- known points of our own schedules ----

def test_one_cycle_is_min_at_0_and_T_max_peaks_at_half_and_repeats():
    lrs = lr_trajectory(OneCycle, make_opt(0.1), 301, T_max=100, min_lr=0.01)
    assert lrs[0] == pytest.approx(0.01) and lrs[100] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.055)
    assert lrs[100:201] == pytest.approx(lrs[:101]) and lrs[200:301] == pytest.approx(lrs[:101])


def test_warmup_cosine_known_points():
    lrs = lr_trajectory(WarmupCosine, make_opt(0.1), 40, warmup_steps=10, total_steps=30, min_lr=0.001)
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[10] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[20] == pytest.approx((0.1 + 0.001) / 2)
    assert lrs[30:] == [0.001] * 10
    assert lrs[:11] == sorted(lrs[:11]) and lrs[10:] == sorted(lrs[10:], reverse=True)


def test_warmup_cosine_start_factor_and_no_warmup():
    assert lr_trajectory(WarmupCosine, make_opt(0.1), 1, warmup_steps=10, total_steps=30, start_factor=0.1) == \
           pytest.approx([0.01])
    assert lr_trajectory(WarmupCosine, make_opt(0.1), 3, warmup_steps=0, total_steps=2) == \
           pytest.approx([0.1, 0.05, 0.0])
    assert warmup_cosine_lr(5, 5, 5, 1.0, 0.2) == 0.2  # all warmup: min_lr from total_steps on


@pytest.mark.parametrize("make, single", [
    (lambda opt: CosineAnnealing(opt, T_max=10, eta_min=0.001), lambda k, lr: cosine_lr(k, 10, lr, 0.001)),
    (lambda opt: OneCycle(opt, T_max=8), lambda k, lr: triangular_lr(k, 8, lr)),
    (lambda opt: WarmupCosine(opt, 3, 12), lambda k, lr: warmup_cosine_lr(k, 3, 12, lr)),
    (lambda opt: CosineOneCycle(opt, [0.1, 0.01, 1.0], 12), lambda k, lr: cosine_one_cycle(k, 12, lr)[0]),
], ids=["CosineAnnealing", "OneCycle", "WarmupCosine", "CosineOneCycle"])
def test_every_param_group_is_scheduled_from_its_own_lr(make, single):
    lrs = (0.1, 0.01, 1.0)
    opt = make_opt(*lrs)
    scheduler = make(opt)
    for step, groups in enumerate(seen(scheduler, opt, 15)):
        assert [lr for lr, _ in groups] == [single(step, lr) for lr in lrs]
    assert len(scheduler.get_last_lr()) == 3


# ---- resume ----

SCHEDULERS = {
    "CosineAnnealing": (lambda opt: CosineAnnealing(opt, T_max=10, eta_min=0.01), "sgd"),
    "OneCycle": (lambda opt: OneCycle(opt, T_max=8, min_lr=0.01), "sgd"),
    "WarmupCosine": (lambda opt: WarmupCosine(opt, 4, 15, min_lr=0.01, start_factor=0.1), "sgd"),
    "CosineOneCycle-sgd": (lambda opt: CosineOneCycle(opt, [0.5, 0.05], 20, three_phase=True), "sgd"),
    "CosineOneCycle-adamw": (lambda opt: CosineOneCycle(opt, 0.5, 20, anneal_strategy="linear"), "adamw"),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_state_dict_mid_schedule_resumes_the_exact_trajectory(name):
    make, kind = SCHEDULERS[name]
    opt = make_opt(0.5, 0.05, kind=kind)
    scheduler = make(opt)
    seen(scheduler, opt, 7)
    # Through torch.save/torch.load(weights_only=True): the state must be plain data, as in a real checkpoint.
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert "optimizer" not in checkpoint["scheduler"]

    fresh_opt = make_opt(0.5, 0.05, kind=kind)
    fresh = make(fresh_opt)  # a scheduler first, then the optimizer's state: torch's documented order
    fresh_opt.load_state_dict(checkpoint["opt"])
    fresh.load_state_dict(checkpoint["scheduler"])
    assert fresh.get_last_lr() == scheduler.get_last_lr()
    assert seen(fresh, fresh_opt, 20) == seen(scheduler, opt, 20)


def test_cosine_one_cycle_state_dict_holds_what_its_docstring_lists():
    torch_keys = set(CosineAnnealingLR(make_opt(), T_max=3).state_dict()) - {"T_max", "eta_min"}
    ours = set(CosineOneCycle(make_opt(), 0.1, 10).state_dict()) - torch_keys
    assert ours == {"total_steps", "pct_start", "anneal_strategy", "three_phase", "div_factor", "final_div_factor",
                    "max_lrs", "max_momentums", "base_momentums", "cycle_momentum", "use_beta1"}
    assert all(f"`{key}`" in CosineOneCycle.__doc__ for key in ours | torch_keys)


# ---- inside torch's combinators ----

def test_linear_warmup_then_cosine_annealing_in_sequential_lr():
    opt = make_opt(0.1)
    warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
    scheduler = SequentialLR(opt, [warmup, CosineAnnealing(opt, T_max=10, eta_min=0.01)], milestones=[5])
    lrs = [lr for ((lr, _),) in seen(scheduler, opt, 25)]
    by_hand = [0.1 * (0.1 + 0.9 * k / 5) for k in range(5)]
    by_hand += [0.01 + 0.09 * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(20)]
    assert lrs == pytest.approx(by_hand, abs=1e-12, rel=0)


def test_in_a_chained_scheduler_ours_set_the_lr_outright():
    opt = make_opt(0.1)
    scheduler = ChainedScheduler([ConstantLR(opt, factor=0.5, total_iters=3), CosineAnnealing(opt, T_max=10)])
    assert [lr for ((lr, _),) in seen(scheduler, opt, 12)] == [cosine_lr(k, 10, 0.1) for k in range(12)]


# ---- lr_trajectory ----

def test_lr_trajectory_takes_torch_and_our_classes_with_their_arguments():
    assert lr_trajectory(CosineAnnealingLR, make_opt(0.1), n_steps=120, T_max=100, eta_min=0.02)[100] == \
           pytest.approx(0.02)
    assert len(lr_trajectory(CosineAnnealing, make_opt(0.1), n_steps=120, T_max=100)) == 120
    assert lr_trajectory(lambda opt: OneCycle(opt, 4), make_opt(0.2), 3) == pytest.approx([0.0, 0.1, 0.2])


def test_lr_trajectory_refuses_an_optimizer_with_gradients():
    opt = make_opt(0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(1)
    with pytest.raises(ValueError, match="zero_grad"):
        lr_trajectory(CosineAnnealing, opt, 5, T_max=10)


def test_lr_trajectory_refuses_reduce_lr_on_plateau():
    with pytest.raises(TypeError, match="validation metric"):
        lr_trajectory(ReduceLROnPlateau, make_opt(0.1), 5)


# ---- argument errors ----

def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match=r"T_max must be a whole number >= 1 \(a number of scheduler steps\), got 0"):
        CosineAnnealing(make_opt(), T_max=0)
    with pytest.raises(ValueError, match="warmup_steps must be an int from 0 to total_steps=10"):
        WarmupCosine(make_opt(), warmup_steps=11, total_steps=10)
    with pytest.raises(ValueError, match="max_lr has 2 values but the optimizer has 3 param groups"):
        CosineOneCycle(make_opt(0.1, 0.1, 0.1), [0.1, 0.2], 10)
    with pytest.raises(ValueError, match="anneal_strategy must be 'cos' or 'linear'"):
        CosineOneCycle(make_opt(), 0.1, 10, anneal_strategy="cosine")
    with pytest.raises(ValueError, match="pass cycle_momentum=False"):
        CosineOneCycle(torch.optim.Adagrad([torch.zeros(1, requires_grad=True)]), 0.1, 10)


def test_lengths_are_ints_and_a_one_cycle_has_room_for_its_peak():
    """True was taken as T_max (1), and a triangular cycle of 1 step never left min_lr: a fit at lr 0."""
    from miniai.schedulers import CosineAnnealing, OneCycle
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for make in (lambda: CosineAnnealing(opt, T_max=True), lambda: OneCycle(opt, T_max=True),
                 lambda: OneCycle(opt, T_max=1)):
        with pytest.raises(ValueError, match="T_max must be"):
            make()
    assert OneCycle(opt, T_max=2).get_last_lr() == [0.0]


@pytest.mark.parametrize("kind", ["ndarray", "tensor"])
def test_a_one_dim_array_of_max_lrs_gives_one_to_each_group(kind):
    """(probe P6, session 22) CosineOneCycle(max_lr=np.array([0.01, 0.1])) put the whole array into every group's
    lr, and the fit failed inside torch's SGD ("alpha must be Number, not numpy.ndarray"), naming no max_lr."""
    import numpy as np
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)]
    made = {"ndarray": np.array, "tensor": torch.tensor}[kind]
    listed = CosineOneCycle(torch.optim.SGD(groups, lr=1.0), max_lr=made([0.01, 0.1]).tolist(), total_steps=10)
    opt = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=1.0)
    CosineOneCycle(opt, max_lr=made([0.01, 0.1]), total_steps=10)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in listed.optimizer.param_groups]
    assert all(type(g["lr"]) is float for g in opt.param_groups)
    with pytest.raises(ValueError, match=r"max_lr is an array of shape \(1, 2\): give one value per param group"):
        CosineOneCycle(torch.optim.SGD([{"params": g["params"]} for g in groups]), max_lr=made([[0.01, 0.1]]),
                       total_steps=10)
