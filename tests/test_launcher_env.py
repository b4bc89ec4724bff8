"""`--nproc N` starts torchrun with each rank's share of this process's cores as its
OMP_NUM_THREADS, unless the user set it (torchrun alone would give every rank one
thread and print a banner)."""

import os

from vaecli.cli.launcher import rank_environment


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_each_rank_gets_its_share_of_the_cores():
    env = rank_environment(2, {"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == str(max(1, _cores() // 2))
    assert env["PATH"] == "/bin"


def test_more_ranks_than_cores_get_one_thread_each():
    assert rank_environment(10 * _cores() + 1, {})["OMP_NUM_THREADS"] == "1"


def test_a_users_setting_is_kept():
    assert rank_environment(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert rank_environment(2, {"OMP_NUM_THREADS": ""})["OMP_NUM_THREADS"] == str(max(1, _cores() // 2))
