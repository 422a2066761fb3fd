"""Optimizers (SGD, Adam, AdamW), parameter groups, weight-decay groups, state dicts and lr schedules.

Every update and every schedule is compared with a float64 transcription of the published formula
written here, independent of cubn/optim (the textbook bias-corrected m_hat / v_hat form of Adam,
for instance, not the rearranged one the library computes).
"""
import copy
import io
import math

import numpy
import pytest

import cubn.nn as nn
from cubn import backend
from cubn.optim import SGD, Adam, AdamW, weight_decay_groups
from cubn.optim.lr_scheduler import CosineAnnealingLR, LinearWarmup, OneCycleLR, StepLR
from conftest import to_dev

STEPS = 6
NOISE = numpy.random.default_rng(7).standard_normal((STEPS, 5))


def grad_of(value, t):
    """A gradient that depends on the parameter (so the trajectory feeds back) and on the step."""
    return 0.5 * value + NOISE[t, :value.shape[-1]]


def param(values, device="cpu", dtype=numpy.float64):
    """A Parameter holding a copy of ``values`` (to_dev alone would share a CPU array that step() updates)."""
    return nn.Parameter(to_dev(numpy.array(values, dtype=dtype), device))


def train(opt, params, start, stop):
    for t in range(start, stop):
        for p in params:
            p.grad = to_dev(grad_of(backend.to_numpy(p.data), t).astype(p.dtype), p.device)
        opt.step()


# ---- float64 references --------------------------------------------------------------------
def sgd_ref(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    def update(p, g, state, t):
        d = g + weight_decay * p
        if momentum:
            state["buf"] = d if t == 1 else momentum * state["buf"] + (1 - dampening) * d
            d = d + momentum * state["buf"] if nesterov else state["buf"]
        return p - lr * d
    return update


def adam_ref(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    b1, b2 = betas

    def update(p, g, state, t):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0) + (1 - b2) * g ** 2
        state["v_max"] = numpy.maximum(state.get("v_max", 0), state["v"]) if amsgrad else state["v"]
        m_hat, v_hat = state["m"] / (1 - b1 ** t), state["v_max"] / (1 - b2 ** t)
        return p - lr * m_hat / (numpy.sqrt(v_hat) + eps)
    return update


def reference(cls, kwargs):
    if cls is SGD:
        return sgd_ref(**kwargs)
    return adam_ref(**{"weight_decay": 1e-2 if cls is AdamW else 0.0, **kwargs}, decoupled=cls is AdamW)


def ref_trajectory(cls, kwargs, p0, steps=STEPS):
    update, state, p, out = reference(cls, kwargs), {}, p0.copy(), []
    for t in range(steps):
        p = update(p, grad_of(p, t), state, t + 1)
        out.append(p)
    return out


CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]
CASE_IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CASES)]


@pytest.mark.parametrize("cls, kwargs", CASES, ids=CASE_IDS)
def test_trajectory_follows_the_update_formula(cls, kwargs, device):
    p0 = numpy.random.default_rng(0).standard_normal((3, 5))
    p = param(p0, device)
    opt = cls([p], **kwargs)
    for t, expected in enumerate(ref_trajectory(cls, kwargs, p0)):
        g = to_dev(grad_of(backend.to_numpy(p.data), t), device)
        p.grad = g.copy()
        opt.step()
        numpy.testing.assert_allclose(backend.to_numpy(p.data), expected, rtol=1e-12, atol=1e-14)
        assert (p.grad == g).all(), "step() must not change the gradient"
    assert all(backend.device_of(v) == device for v in opt.state[p].values() if hasattr(v, "shape"))


@pytest.mark.parametrize("cls, kwargs", [CASES[2], CASES[4], CASES[6]], ids=["SGD", "Adam", "AdamW"])
def test_float32_parameters_keep_their_dtype(cls, kwargs, device):
    p0 = numpy.random.default_rng(1).standard_normal((3, 5))
    p = param(p0, device, numpy.float32)
    opt = cls([p], **kwargs)
    train(opt, [p], 0, STEPS)
    assert p.dtype == numpy.float32 and all(v.dtype == numpy.float32 for v in opt.state[p].values()
                                            if hasattr(v, "dtype"))
    numpy.testing.assert_allclose(backend.to_numpy(p.data), ref_trajectory(cls, kwargs, p0)[-1], rtol=1e-5, atol=1e-6)


def test_param_groups_take_their_own_hyper_parameters(device):
    a0, b0 = numpy.linspace(-1, 1, 5), numpy.linspace(2, 3, 5)
    a, b, idle = param(a0, device), param(b0, device), param(numpy.ones(5), device)
    opt = SGD([{"params": [a, idle]}, {"params": b, "lr": 0.01, "momentum": 0.5}], lr=0.1, momentum=0.9)
    assert [(g["lr"], g["momentum"], g["dampening"]) for g in opt.param_groups] == [(0.1, 0.9, 0.0), (0.01, 0.5, 0.0)]
    train(opt, [a, b], 0, STEPS)
    numpy.testing.assert_allclose(backend.to_numpy(a.data), ref_trajectory(SGD, dict(lr=0.1, momentum=0.9), a0)[-1],
                                  rtol=1e-12)
    numpy.testing.assert_allclose(backend.to_numpy(b.data), ref_trajectory(SGD, dict(lr=0.01, momentum=0.5), b0)[-1],
                                  rtol=1e-12)
    assert (backend.to_numpy(idle.data) == 1).all() and idle not in opt.state  # no gradient, no update, no state


def test_zero_grad_forgets_gradients_and_step_returns_the_closure_loss():
    p = nn.Parameter(numpy.ones(3))
    opt = Adam([p])
    p.grad = numpy.ones(3)
    assert opt.step(lambda: 2.5) == 2.5
    opt.zero_grad()
    assert p.grad is None


def all_norms_model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True),
        nn.BatchRenorm2d(4), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.BatchRenorm1d(6), nn.InstanceNorm1d(6, affine=True),
        nn.LayerNorm(6), nn.RMSNorm(6), nn.Linear(6, 2, bias=False), nn.BatchNorm3d(2),
        nn.InstanceNorm3d(2, affine=True))


def test_weight_decay_groups_exempt_exactly_norm_parameters_and_biases():
    model = all_norms_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = weight_decay_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decayed["params"]) == ["0.weight", "11.weight", "5.weight"]
    assert sorted(names[id(p)] for p in exempt["params"]) == sorted(set(names.values()) - {"0.weight", "11.weight",
                                                                                            "5.weight"})

    # AdamW with zero gradients moves parameters by the decay alone.
    before = {id(p): p.data.copy() for p in model.parameters()}
    opt = AdamW([decayed, exempt], lr=0.1)
    for p in model.parameters():
        p.grad = numpy.zeros_like(p.data)
    opt.step()
    for p in decayed["params"]:
        numpy.testing.assert_allclose(p.data, before[id(p)] * (1 - 0.1 * 0.05), rtol=1e-6)
    assert all((p.data == before[id(p)]).all() for p in exempt["params"])


def test_weight_decay_groups_list_a_shared_parameter_once():
    shared = nn.Linear(3, 3)
    decayed, exempt = weight_decay_groups(nn.Sequential(shared, nn.ReLU(), shared), 0.1)
    assert decayed["params"] == [shared.weight] and exempt["params"] == [shared.bias]


# ---- state dicts ---------------------------------------------------------------------------
def through_npz(state):
    """Write every leaf of a state dict with numpy.savez(allow_pickle=False), read it back and rebuild
    the tree with string keys, as a checkpoint file would give it."""
    leaves = {}

    def skeleton(node, key):
        if isinstance(node, dict):
            return {str(k): skeleton(v, f"{key}.{k}") for k, v in node.items()}
        if isinstance(node, list) and node and isinstance(node[0], dict):
            return [skeleton(v, f"{key}.{i}") for i, v in enumerate(node)]
        leaves[key] = backend.to_numpy(node)
        return key

    tree = skeleton(state, "")
    buffer = io.BytesIO()
    numpy.savez(buffer, **leaves)
    buffer.seek(0)
    with numpy.load(buffer, allow_pickle=False) as saved:
        def rebuild(node):
            if isinstance(node, dict):
                return {k: rebuild(v) for k, v in node.items()}
            return [rebuild(v) for v in node] if isinstance(node, list) else saved[node]
        return rebuild(tree)


@pytest.mark.parametrize("via_npz", [False, True], ids=["dict", "npz"])
@pytest.mark.parametrize("cls, kwargs", [CASES[1], CASES[2], CASES[4], CASES[6]], ids=CASE_IDS[1:3] + CASE_IDS[4:7:2])
def test_state_dict_round_trip_continues_bit_identically(cls, kwargs, via_npz, device):
    starts = [numpy.random.default_rng(2).standard_normal((4, 5)), numpy.random.default_rng(3).standard_normal(5)]

    def fresh(values):
        params = [param(v, device) for v in values]
        return params, cls([{"params": [params[0]]}, {"params": [params[1]], "lr": kwargs["lr"] / 2}], **kwargs)

    params, opt = fresh(starts)
    train(opt, params, 0, 3)
    saved, halfway = opt.state_dict(), [backend.to_numpy(p.data).copy() for p in params]
    train(opt, params, 3, 6)  # the uninterrupted run; also proves `saved` is a copy, not a view of live state
    resumed_params, resumed = fresh(halfway)
    kept = copy.deepcopy(saved)
    resumed.load_state_dict(through_npz(saved) if via_npz else saved)
    train(resumed, resumed_params, 3, 6)
    for index, entry in kept["state"].items():  # the resumed optimizer copied the state it was given
        assert all(numpy.array_equal(backend.to_numpy(v), backend.to_numpy(saved["state"][index][k]))
                   for k, v in entry.items())
    for p, q in zip(params, resumed_params):
        assert numpy.array_equal(backend.to_numpy(p.data), backend.to_numpy(q.data))


def stepped_adam():
    a, b = nn.Parameter(numpy.zeros(3)), nn.Parameter(numpy.zeros(2))
    opt = Adam([a, b])
    a.grad, b.grad = numpy.ones(3), numpy.ones(2)
    opt.step()
    return a, b, opt


def test_load_state_dict_rejects_a_mismatched_state_dict():
    a, b, opt = stepped_adam()
    saved = opt.state_dict()
    cases = [
        (Adam([{"params": [a]}, {"params": [b]}]), saved, "has 1 parameter groups, this optimizer has 2"),
        (Adam([a]), saved, "group 0 has 2 parameters in the state dict, 1 in this optimizer"),
        (Adam([a, nn.Parameter(numpy.zeros(4))]), saved,
         r"exp_avg of parameter 1 has shape \(2,\), the parameter has shape \(4,\)"),
        (SGD([a, b], lr=0.1), saved, r"lacks \['dampening', 'momentum', 'nesterov'\]"),
        (Adam([a, b]), {"state": {}}, "expected a dict with keys 'param_groups' and 'state'"),
        (Adam([a, b]), {**saved, "state": {5: {}}}, "state for parameter 5, this optimizer has 2 parameters"),
        (Adam([a, b]), {**saved, "state": {0: {"momentum_buffer": numpy.zeros(3)}}},
         r"unknown state \['momentum_buffer'\]"),
        (Adam([a, b]), {**saved, "param_groups": [{**saved["param_groups"][0], "lr": -1.0}]},
         "lr must be a number >= 0"),
    ]
    for target, state_dict, match in cases:
        before = target.state_dict()
        with pytest.raises(ValueError, match=match):
            target.load_state_dict(state_dict)
        assert target.state_dict()["param_groups"] == before["param_groups"] and not target.state  # nothing changed


@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=0), "lr must be a positive number, got 0"),
    (lambda p: SGD(p, lr=float("nan")), "lr must be a positive number"),
    (lambda p: SGD(p, lr="0.1"), "lr must be a positive number"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.1), r"momentum must be a number in \[0, 1\]"),
    (lambda p: SGD(p, lr=0.1, dampening=2), r"dampening must be a number in \[0, 1\]"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1), "weight_decay must be a number >= 0"),
    (lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov=True needs a momentum > 0"),
    (lambda p: Adam(p, lr=-1e-3), "lr must be a positive number"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), r"betas\[0\] must be a number in \[0, 1\)"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), r"betas\[1\] must be"),
    (lambda p: Adam(p, betas=0.9), "betas must be a pair"),
    (lambda p: Adam(p, eps=-1e-8), "eps must be a number >= 0"),
    (lambda p: AdamW(p, weight_decay=-0.01), "weight_decay must be a number >= 0"),
    (lambda p: AdamW([{"params": p, "lr": -1}]), "lr must be a positive number"),
    (lambda p: SGD([], lr=0.1), "empty parameter list"),
    (lambda p: SGD([{"params": p}, {"params": p}], lr=0.1), "more than once"),
])
def test_bad_hyper_parameters_are_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make([nn.Parameter(numpy.zeros(2))])


def test_non_tensor_parameters_are_type_errors():
    with pytest.raises(TypeError, match="got a Tensor; wrap it in a list"):
        SGD(nn.Parameter(numpy.zeros(2)), lr=0.1)
    with pytest.raises(TypeError, match="can only optimize floating-point Tensors"):
        Adam([numpy.zeros(2)])


# ---- schedules ------------------------------------------------------------------------------
BASE_LRS = (0.1, 0.02)


def schedule_optimizer():
    return SGD([{"params": [nn.Parameter(numpy.zeros(2))], "lr": lr} for lr in BASE_LRS], lr=1.0, momentum=0.9)


def cos_between(start, end, pct):
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


def cosine(base, t, eta_min=1e-3, T_max=10):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


def one_cycle(max_lr, t):  # total_steps=20, pct_start=0.3: phase 1 ends at step 0.3 * 20 - 1 = 5, phase 2 at 19
    initial = max_lr / 25
    return cos_between(initial, max_lr, t / 5) if t <= 5 else cos_between(max_lr, initial / 1e4, (t - 5) / 14)


def one_cycle_linear(max_lr, t):  # total_steps=17, pct_start=0.25: phase 1 ends at 3.25, phase 2 at 16
    initial = max_lr / 10
    end = initial / 100
    return initial + (max_lr - initial) * t / 3.25 if t <= 3.25 else max_lr + (end - max_lr) * (t - 3.25) / 12.75


SCHEDULES = {  # name: (make, steps, expected lr of (group index, base lr, step))
    "StepLR": (lambda o: StepLR(o, step_size=3, gamma=0.5), 20, lambda i, base, t: base * 0.5 ** (t // 3)),
    "CosineAnnealingLR": (lambda o: CosineAnnealingLR(o, T_max=10, eta_min=1e-3), 25,
                          lambda i, base, t: cosine(base, t)),
    "OneCycleLR": (lambda o: OneCycleLR(o, max_lr=[1.0, 0.4], total_steps=20), 20,
                   lambda i, base, t: one_cycle([1.0, 0.4][i], t)),
    "OneCycleLR-linear": (lambda o: OneCycleLR(o, max_lr=0.5, total_steps=17, pct_start=0.25, anneal_strategy="linear",
                                               div_factor=10, final_div_factor=100), 17,
                          lambda i, base, t: one_cycle_linear(0.5, t)),
    "LinearWarmup": (lambda o: LinearWarmup(o, warmup_steps=5, start_factor=0.1), 12,
                     lambda i, base, t: base * (0.1 + 0.9 * min(t, 5) / 5)),
    "LinearWarmup-after-cosine": (lambda o: LinearWarmup(o, 4, start_factor=0.25,
                                                         after=CosineAnnealingLR(o, T_max=10, eta_min=1e-3)), 20,
                                  lambda i, base, t: base * (0.25 + 0.75 * t / 4) if t < 4 else cosine(base, t - 4)),
    "LinearWarmup-after-step": (lambda o: LinearWarmup(o, 3, after=StepLR(o, 2, gamma=0.5)), 15,
                                lambda i, base, t: base * (1 + 2 * t / 3) / 3 if t < 3
                                else base * 0.5 ** ((t - 3) // 2)),
}


def lr_sequence(schedule, steps):
    lrs = [schedule.get_last_lr()]
    for _ in range(steps):
        schedule.optimizer.step()
        schedule.step()
        lrs.append(schedule.get_last_lr())
        assert [g["lr"] for g in schedule.optimizer.param_groups] == lrs[-1]
    return lrs


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_follows_its_closed_form(name):
    make, steps, expected = SCHEDULES[name]
    got = lr_sequence(make(schedule_optimizer()), steps)
    want = [[expected(i, base, t) for i, base in enumerate(BASE_LRS)] for t in range(steps + 1)]
    numpy.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_state_round_trip_continues_exactly(name):
    make, steps, _ = SCHEDULES[name]
    schedule = make(schedule_optimizer())
    lr_sequence(schedule, 7)
    saved = {k: numpy.asarray(v) for k, v in schedule.state_dict().items()}  # as read back from a .npz
    rest = lr_sequence(schedule, steps - 7)
    resumed = make(schedule_optimizer())
    resumed.load_state_dict(saved)
    assert lr_sequence(resumed, steps - 7) == rest


def test_an_optimizer_scheduled_down_to_lr_0_still_loads():
    opt = schedule_optimizer()
    schedule = CosineAnnealingLR(opt, T_max=3)
    lr_sequence(schedule, 3)
    assert schedule.get_last_lr() == [0.0, 0.0]
    resumed = schedule_optimizer()
    resumed.load_state_dict(through_npz(opt.state_dict()))
    assert [g["lr"] for g in resumed.param_groups] == [0.0, 0.0]
    assert [g["initial_lr"] for g in resumed.param_groups] == list(BASE_LRS)


def test_one_cycle_refuses_to_step_past_total_steps():
    schedule = OneCycleLR(schedule_optimizer(), max_lr=1.0, total_steps=4)
    lrs = lr_sequence(schedule, 4)
    with pytest.raises(ValueError, match="stepped 5 times, but total_steps is 4"):
        schedule.step()
    assert schedule.get_last_lr() == lrs[-1] and schedule.last_epoch == 4


@pytest.mark.parametrize("make, match", [
    (lambda o: StepLR(o, step_size=0), "step_size must be an integer >= 1"),
    (lambda o: StepLR(o, step_size=1.5), "step_size must be an integer >= 1"),
    (lambda o: StepLR(o, 2, gamma=0), "gamma must be a positive number"),
    (lambda o: CosineAnnealingLR(o, T_max=0), "T_max must be an integer >= 1"),
    (lambda o: CosineAnnealingLR(o, 10, eta_min=-1), "eta_min must be a number >= 0"),
    (lambda o: OneCycleLR(o, max_lr=[1.0], total_steps=10), r"one per parameter group \(2\), got 1"),
    (lambda o: OneCycleLR(o, max_lr=0, total_steps=10), "max_lr must be a positive number"),
    (lambda o: OneCycleLR(o, 1.0, 10, anneal_strategy="exp"), "anneal_strategy must be 'cos' or 'linear'"),
    (lambda o: OneCycleLR(o, 1.0, 10, pct_start=1.5), r"pct_start must be a number in \[0, 1\]"),
    (lambda o: OneCycleLR(o, 1.0, 10, pct_start=0.1), "a phase of zero steps"),
    (lambda o: LinearWarmup(o, warmup_steps=0), "warmup_steps must be an integer >= 1"),
    (lambda o: LinearWarmup(o, 3, start_factor=2), r"start_factor must be a number in \[0, 1\]"),
    (lambda o: LinearWarmup(o, 3, after=StepLR(schedule_optimizer(), 2)), "same optimizer"),
    (lambda o: StepLR(o, 2).load_state_dict({"last_epoch": 3, "base_lrs": [0.1]}), "1 base lrs, the optimizer has 2"),
    (lambda o: StepLR(o, 2).load_state_dict({"last_epoch": 3}), "keys 'last_epoch' and 'base_lrs'"),
])
def test_bad_schedule_arguments_are_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(schedule_optimizer())


def test_schedule_needs_an_optimizer():
    with pytest.raises(TypeError, match="needs a cubn.optim Optimizer"):
        StepLR(object(), 2)
