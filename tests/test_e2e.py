"""End to end: a small network trains on the CPU path."""
import numpy

from cubn.train.demo import train_spirals


def test_batchnorm_mlp_trains_at_a_learning_rate_that_breaks_the_plain_mlp():
    acc_bn, losses = train_spirals(norm=True, lr=0.5, momentum=0.0, epochs=20, device="cpu", log=None)
    acc_plain, _ = train_spirals(norm=False, lr=0.5, momentum=0.0, epochs=20, device="cpu", log=None)
    assert numpy.mean(losses[-14:]) < 0.25 * numpy.mean(losses[:14])  # loss falls
    assert acc_bn >= 0.95, acc_bn
    assert acc_plain <= 0.75, acc_plain  # the same MLP without BN at this rate does clearly worse


def test_main_job_learns_and_reports(capsys):
    accuracy, _ = train_spirals(epochs=3, device="cpu")
    assert accuracy > 0.8
    assert "val acc" in capsys.readouterr().out
