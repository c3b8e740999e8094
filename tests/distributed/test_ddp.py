"""DDP on CPU (gloo, 2 processes): equivalence with one process, frozen groups, signals, resume, dead ranks.

Ranks are started as plain subprocesses with torchrun's environment variables (RANK, WORLD_SIZE,
MASTER_ADDR/PORT), so each one's exit code and PID are visible to the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import TINY_T64, read_log, tiny_char_args, train_args
from toolkit.cli.train import main as train_main
from toolkit.errors import DISTRIBUTED_EXIT, INTERRUPTED_EXIT
from toolkit.train.checkpoint import load_checkpoint

# Adam's eps is raised so that gradients that are zero in exact arithmetic (the key biases: softmax is
# invariant to them) but rounding noise in practice are not amplified to full-size steps.
NO_DROPOUT = {"model.dropout": 0.0, "optimizer.eps": 1e-3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(args: list[str], world_size: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "toolkit.cli.train", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 120) -> list[int]:
    codes = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        proc.stderr_text = err  # type: ignore[attr-defined]
        codes.append(proc.returncode)
    return codes


def model_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint_last.pt")["model"]


def assert_close_models(a: Path, b: Path, atol: float) -> None:
    state_a, state_b = model_state(a), model_state(b)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=atol, msg=key)


def test_two_processes_equal_one_with_twice_the_batch(text8_small, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert train_main(tiny_char_args(text8_small, single, max_update=4, **NO_DROPOUT, **{"task.batch_size": 8})) == 0
    procs = start_ranks(tiny_char_args(text8_small, double, max_update=4, **NO_DROPOUT, **{"task.batch_size": 4}))
    assert wait_all(procs) == [0, 0], [p.stderr_text[-1500:] for p in procs]
    assert_close_models(single, double, atol=1e-6)
    # logged losses are all-reduced: the same numbers as the single process's
    for a, b in zip(read_log(single), read_log(double)):
        assert abs(a["loss"] - b["loss"]) < 1e-5


def test_frozen_groups_under_ddp(text8_small, tmp_path):
    """Block-coordinate-descent phases freeze groups; DDP is rebuilt, nothing hangs, result == 1 process."""
    extra = {
        **NO_DROPOUT,
        "param_groups.first": "{params: 'layers\\.0\\.', optimizer: {name: sgd, lr: 0.1}, lr_scheduler: {name: constant}}",
        "phases": "{unit: update, cycle: [{groups: [first], length: 1}, {groups: [main], length: 2}]}",
    }
    single, double = tmp_path / "single", tmp_path / "double"
    assert train_main(tiny_char_args(text8_small, single, max_update=5, **extra, **{"task.batch_size": 8})) == 0
    procs = start_ranks(tiny_char_args(text8_small, double, max_update=5, **extra, **{"task.batch_size": 4}))
    assert wait_all(procs, timeout=120) == [0, 0], [p.stderr_text[-1500:] for p in procs]
    assert_close_models(single, double, atol=1e-6)


def t64_args(data: Path, run_dir: Path, batch_size: int) -> list[str]:
    """A 3-layer T64 model whose layer-1 and layer-2 heads switch off after updates 1 and 2 (of 4)."""
    small = {
        **TINY_T64,
        "max_update": 4,
        "save_interval": 4,
        "model.n_layers": 3,
        "model.dropout": 0.0,
        "optimizer.eps": 1e-3,
        "task.batch_size": batch_size,
        "lr_scheduler.warmup_updates": 0,
    }
    return train_args("t64/t64_text8_tiny", data, run_dir, **small)


def test_switched_off_aux_heads_are_frozen_under_ddp(text8_small, tmp_path):
    """A head whose term's weight drops to 0 gets no gradient: the trainer freezes it (the model's
    aux_term_parameters) and rebuilds DDP, so no rank waits for its gradient; result == 1 process."""
    single, double = tmp_path / "single", tmp_path / "double"
    assert train_main(t64_args(text8_small, single, 8)) == 0
    procs = start_ranks(t64_args(text8_small, double, 4))
    assert wait_all(procs, timeout=120) == [0, 0], [p.stderr_text[-1500:] for p in procs]
    assert_close_models(single, double, atol=1e-6)
    assert [r["weight/layer_1_nll"] for r in read_log(double)] == [1.0, 0.0, 0.0, 0.0]


def test_resume_with_two_processes_is_exact(text8_small, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert wait_all(start_ranks(tiny_char_args(text8_small, straight, max_update=6))) == [0, 0]
    assert wait_all(start_ranks(tiny_char_args(text8_small, resumed, max_update=3))) == [0, 0]
    assert wait_all(start_ranks(tiny_char_args(text8_small, resumed, max_update=6))) == [0, 0]
    assert_close_models(straight, resumed, atol=0.0)  # bit for bit, dropout on
    assert len(load_checkpoint(resumed / "checkpoint_last.pt")["rng"]) == 2  # every rank's RNG is saved


def wait_for_updates(run_dir: Path, n: int, timeout: float = 90) -> None:
    log = run_dir / "train_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= n):
        time.sleep(0.05)


def test_sigterm_to_one_rank_stops_all_with_a_checkpoint(text8_small, tmp_path):
    run = tmp_path / "run"
    procs = start_ranks(tiny_char_args(text8_small, run, max_update=100000, save_interval=0))
    wait_for_updates(run, 2)
    os.kill(procs[1].pid, signal.SIGTERM)
    assert wait_all(procs, timeout=60) == [INTERRUPTED_EXIT, INTERRUPTED_EXIT]
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["position"]["step"] >= 2 and len(state["rng"]) == 2


def test_dead_rank_makes_the_others_exit_with_a_clear_error(text8_small, tmp_path):
    run = tmp_path / "run"
    procs = start_ranks(
        tiny_char_args(text8_small, run, max_update=100000, save_interval=0, **{"distributed.timeout_s": 20})
    )
    wait_for_updates(run, 2)
    procs[1].kill()
    start = time.time()
    out, err = procs[0].communicate(timeout=60)
    procs[1].communicate()
    assert procs[0].returncode == DISTRIBUTED_EXIT, err[-1500:]
    assert "error: rank 0: distributed training stopped" in err
    assert time.time() - start < 40


def test_switched_off_aux_heads_of_the_streamed_lm_are_frozen_under_ddp(text8_small, tmp_path):
    """The same for the aux heads of the streamed LM (with adaptive span, persistent memory and a product-key
    memory): its streams split over two ranks train as one process with all of them."""
    from tests.integration.test_combinations_cli import combination_args

    single, double = tmp_path / "single", tmp_path / "double"
    # no BatchNorm in the memory's query: its batch statistics would differ per rank
    same = {"model.memory.pkm.query_batchnorm": "false", "model.dropout": 0.0, "batch.sequences_per_update": 4}
    same.update({"max_update": 4, "task.valid_max_tokens": 200})
    assert train_main(combination_args(text8_small, single, **same, **{"task.batch_size": 4})) == 0
    procs = start_ranks(combination_args(text8_small, double, **same, **{"task.batch_size": 2}))
    assert wait_all(procs, timeout=120) == [0, 0], [p.stderr_text[-1500:] for p in procs]
    assert_close_models(single, double, atol=1e-5)
    assert [r["weight/layer_3_nll"] for r in read_log(double)] == [1.0, 1.0, 0.0, 0.0]  # off at 0.5 * 3 / 4 * 4
