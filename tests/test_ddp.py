"""Two-process DDP on CPU (gloo): every parameter gets a gradient on every rank in every step,
whether or not a rank's batch has clicks or foreground, so DDP neither hangs nor errors, and
without ``find_unused_parameters``."""
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _worker(rank: int, world_size: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    import s2vnet  # noqa: F401
    from conftest import synthetic_clip, tiny_model
    from s2vnet.data.clip_mapper import instances_from_sem_seg

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = tiny_model(seed=0).train()
    # Rank 0: no clicks and a clip without any foreground (no tracks at all);
    # rank 1: every present class clicked, several rounds.
    if rank == 0:
        model.click_simulator.settings = replace(model.click_simulator.settings, click_prob=0.0)
        clip = synthetic_clip(seed=10)
        clip["sem_seg"][clip["sem_seg"] != 255] = 0
        clip["instances"] = [instances_from_sem_seg(s, 255) for s in clip["sem_seg"]]
    else:
        model.click_simulator.settings = replace(model.click_simulator.settings, click_prob=1.0, max_rounds=2)
        clip = synthetic_clip(seed=11)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    for _ in range(2):
        losses = ddp([clip])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    # Parameters only: BatchNorm running statistics are per-rank buffers (broadcast_buffers=False).
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.save(state, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_ddp_step_with_and_without_clicks():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.spawn(_worker, args=(2, init_file, tmp), nprocs=2, join=False)
        deadline = time.time() + 240
        while not context.join(timeout=5):
            if time.time() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("DDP step did not finish in 240 s: a rank is waiting for a gradient that never comes")
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    # Gradients were all-reduced: both ranks hold identical weights after the steps.
    for key in states[0]:
        assert torch.allclose(states[0][key], states[1][key], atol=1e-6), key
