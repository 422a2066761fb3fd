"""cubn.set_num_threads / get_num_threads (the BLAS behind the CPU path's matrix products), ``--threads`` of
``cubn train`` / ``cubn eval``, and cubn.cpu.keep_freed_memory."""
import pytest

import cubn
from cubn import cli


@pytest.fixture
def restore_one_thread():
    yield
    cubn.set_num_threads(1)                 # the suite's setting (tests/conftest.py)


def test_set_then_get(restore_one_thread):
    assert cubn.get_num_threads() == 1
    cubn.set_num_threads(2)
    assert cubn.get_num_threads() == 2
    cubn.set_num_threads(1)
    assert cubn.get_num_threads() == 1


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None])
def test_bad_counts_are_refused_by_name(n):
    with pytest.raises(ValueError, match=r"set_num_threads: n must be an integer >= 1, got"):
        cubn.set_num_threads(n)
    assert cubn.get_num_threads() == 1


@pytest.mark.parametrize("env, expected", [({}, 1), ({"OMP_NUM_THREADS": "3"}, 3),
                                           ({"OPENBLAS_NUM_THREADS": "2"}, 2),
                                           ({"OMP_NUM_THREADS": "many", "OPENBLAS_NUM_THREADS": "4"}, 4),
                                           ({"OMP_NUM_THREADS": "0"}, 1)])
def test_cli_default_is_one_thread_unless_the_environment_says(monkeypatch, env, expected):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.default_threads() == expected
    assert cli.build_parser().parse_args(["train"]).threads == expected


def test_cli_threads_flag_sets_the_count_before_the_run(tmp_path, capsys, restore_one_thread):
    # a missing model file stops `cubn eval` after the thread count is set, before any work
    assert cli.main(["eval", "--model-file", str(tmp_path / "missing.npz"), "--threads", "2"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert cubn.get_num_threads() == 2


def test_cli_refuses_a_zero_thread_count(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--threads", "0"])
    assert e.value.code == 2 and "--threads: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_keep_freed_memory_takes_on_glibc_only():
    import platform

    from cubn import cpu
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert cpu.keep_freed_memory() is on_glibc
    assert cpu.keep_freed_memory(1 << 20, 4 << 20) is on_glibc
