"""Run under `mpiexec -n 2 python -m mpi4py tests/mpi/ddp.py TMPDIR`: DistributedDataParallel with SyncBatchNorm
over 2 ranks, 5 SGD steps, equals one process on the concatenated batch (float64, to 1e-10) for equal and uneven
splits; parameters bitwise equal on both ranks; eval makes no collective call; the sampler's shards; fit under
DDP resumes exactly. Rank 0 prints one "ok ..." line per part."""
import os
import sys

import numpy

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn import distributed as dist
from cubn import optim, train
from cubn.data import DataLoader, DistributedSampler

r, size = dist.rank(), dist.world_size()
assert size == 2
tmp = sys.argv[1]


def say(text):
    if r == 0:
        print("ok " + text, flush=True)


def make_model(norm):
    cubn.manual_seed(1 + r)                 # different on each rank: DDP must broadcast rank 0's start
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 3)).double()


def state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ---- 5 SGD steps, 2 ranks vs 1 process on the whole batch --------------------------------------------
rng = numpy.random.default_rng(0)
X = rng.standard_normal((5, 8, 2, 4, 4)) * 3 + 2          # 5 steps of 8 samples
Y = rng.integers(0, 3, (5, 8))
for split, reduction in (((4, 4), "mean"), ((4, 4), "sum"), ((5, 3), "sum"), ((8, 0), "sum")):
    ddp = nn.parallel.DistributedDataParallel(make_model(nn.SyncBatchNorm), grad_reduction=reduction)
    start = state(ddp.module)
    opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    lo, hi = (0, split[0]) if r == 0 else (split[0], 8)
    for step in range(5):
        logits = ddp(cubn.tensor(X[step, lo:hi]))
        target = cubn.tensor(Y[step, lo:hi])
        # "mean": each rank's own mean loss (exact for equal splits); "sum": a per-sample sum over the global batch
        loss = (F.cross_entropy(logits, target) if reduction == "mean"
                else F.cross_entropy(logits, target, reduction="sum") / 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mine = state(ddp.module)
    both = dist.all_gather_object({k: v.tobytes() for k, v in mine.items()})
    assert both[0] == both[1], f"{split}: parameters or buffers differ between the ranks"
    if r == 0:
        single = make_model(nn.BatchNorm2d)
        single.load_state_dict(start)
        opt1 = optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
        for step in range(5):
            loss = F.cross_entropy(single(cubn.tensor(X[step])), cubn.tensor(Y[step]))
            opt1.zero_grad()
            loss.backward()
            opt1.step()
        for k, v in state(single).items():
            numpy.testing.assert_allclose(mine[k], v, rtol=1e-10, atol=1e-10, err_msg=f"{split} {reduction}: {k}")
    say(f"ddp {split} grad_reduction={reduction}: equals one process on the whole batch after 5 steps")

# ---- the start is rank 0's, and eval communicates nothing ------------------------------------------------
ddp = nn.parallel.DistributedDataParallel(make_model(nn.SyncBatchNorm))
zero = dist.broadcast(numpy.concatenate([p.data.reshape(-1) for p in ddp.parameters()]), 0)
assert (numpy.concatenate([p.data.reshape(-1) for p in ddp.parameters()]) == zero).all()
backend, seen = dist._current(), []
saved = {n: getattr(backend, n) for n in ("all_gather", "broadcast", "all_gather_objects", "barrier")}
for n, m in saved.items():
    setattr(backend, n, lambda *a, _m=m, _n=n, **k: (seen.append(_n), _m(*a, **k))[1])
ddp.eval()
out = ddp(cubn.tensor(X[0, :3]))
F.cross_entropy(out, cubn.tensor(Y[0, :3])).backward()
for n, m in saved.items():
    setattr(backend, n, m)
assert seen == [], f"eval forward and backward made collective calls: {seen}"
say("eval: no collective call")

# ---- no_sync accumulates locally ------------------------------------------------------------------------
ddp.train()
with ddp.no_sync():
    F.cross_entropy(ddp(cubn.tensor(X[1, 4 * r:4 * r + 4])), cubn.tensor(Y[1, 4 * r:4 * r + 4])).backward()
local = ddp.module[5].bias.grad.copy()
grads = dist.all_gather(local)
assert not (grads[0] == grads[1]).all(), "no_sync reduced the gradients"
say("no_sync: gradients stay local")

# ---- DistributedSampler ------------------------------------------------------------------------------------
for n in (10, 11, 1, 0):
    for pad, drop_last in ((True, False), (False, False), (True, True)):
        s = DistributedSampler(n, seed=3, pad=pad, drop_last=drop_last)
        s.set_epoch(2)
        shards = dist.all_gather_object(s.indices().tolist())
        flat = [i for shard in shards for i in shard]
        assert len(shards[r]) == len(s) and s.num_samples == (n // 2 if drop_last else -(-n // 2))
        if not pad:
            assert sorted(flat) == list(range(n)), f"n={n}: pad=False shards are not disjoint and complete"
        elif drop_last:
            assert len(set(flat)) == len(flat) == n // 2 * 2
        else:
            assert set(flat) == set(range(n)) and len(flat) == -(-n // 2) * 2
s1, s2 = DistributedSampler(10, seed=3), DistributedSampler(10, seed=3)
s2.set_epoch(1)
assert s1.indices().tolist() != s2.indices().tolist(), "set_epoch must reshuffle"
say("sampler: shards disjoint and complete (pad=False), padded and cut as PyTorch's otherwise")

# ---- fit under DDP: 3 epochs in one go == 2 epochs, then resume to 3 ---------------------------------------
images = numpy.random.default_rng(4).standard_normal((22, 2, 4, 4))
labels = numpy.random.default_rng(5).integers(0, 3, 22)


def run(epochs, path, resume=None):
    ddp = nn.parallel.DistributedDataParallel(make_model(nn.SyncBatchNorm))
    loader = DataLoader(images, labels, 3, seed=0, sampler=DistributedSampler(len(images), seed=7, pad=False))
    opt = optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, 1, 0.5)
    history = train.fit(ddp, loader, opt, epochs, scheduler=sched, checkpoint=path, resume=resume, progress=False)
    return history, state(ddp.module)


paths = [os.path.join(tmp, f"ckpt{i}.npz") for i in range(2)]
full, want = run(3, paths[0])
run(2, paths[1])
resumed, got = run(3, paths[1], resume=paths[1])
for k in want:
    assert want[k].tobytes() == got[k].tobytes(), f"resumed run differs in {k}"
for key in ("loss", "accuracy"):
    assert full[key] == resumed[key], f"{key}: {full[key]} in one go, {resumed[key]} resumed"
assert os.path.exists(paths[0]), "rank 0 writes the checkpoint"
say("fit: a resumed data-parallel run continues exactly; history is the whole data set's")
