"""Process groups for torchrun: who this process is (`Dist`), the group and its timeout, and work shared out.

Every script runs unchanged under torchrun: `init_distributed` reads torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK) and starts the process group, nccl on GPUs and gloo on the CPU, with an explicit timeout
(Config.dist_timeout_min): the longest any rank may wait in a collective for the others, e.g. while rank 0
alone scans the corpus or writes a checkpoint. Evaluation never makes the other ranks wait: under a process
group `embedding.Embedder.embed` gives each rank every world_size-th file to embed and gathers the embeddings
on every rank (`shard`, `gather`), so all ranks finish an evaluation together. Outside torchrun there is no
process group and everything runs in the one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils import UserError

log = logging.getLogger("voiceprint")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # launched by torchrun: a process group exists (even of one process)
    owns_group: bool = False  # this Dist started the group, so `finish_distributed` ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    """The Dist of the process group already started in this process, or a single process without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), distributed=True)


def init_distributed(device_name: str, timeout_min: float) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process, with no process group.
    A group already started (train_sort's rounds call train.train under its group) is joined, not restarted.
    Ranks other than 0 log warnings only: rank 0 speaks for the job."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return current()
    world_size = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; start at "
                            f"most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU, for every later .to("cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    if rank != 0:
        log.setLevel(logging.WARNING)
    return Dist(rank, world_size, local_rank, distributed=True, owns_group=True)


def finish_distributed(d: Dist) -> None:
    """Wait for every rank, then end the group if `d` started it."""
    if d.distributed:
        dist.barrier()
    if d.owns_group:
        dist.destroy_process_group()


def shard(items: list, d: Dist) -> list:
    """This rank's share of a list every rank holds alike: every world_size-th item, from its rank on."""
    return items[d.rank::d.world_size]


def gather(part: dict, d: Dist) -> dict:
    """The union of every rank's dict, on every rank (an all_gather; `part` alone without a process group)."""
    if not d.distributed:
        return part
    parts: list[dict | None] = [None] * d.world_size
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def broadcast(value: object, d: Dist) -> object:
    """Rank 0's `value` on every rank (the others pass anything, e.g. None)."""
    if not d.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
