"""Device and process-group setup, one place for every stage: torchrun's RANK / WORLD_SIZE /
LOCAL_RANK, NCCL on CUDA and gloo on CPU (the CPU tests run 2 gloo ranks)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from golf.core.utils import GolfError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owned: bool = False  # this process initialised the group (and tears it down)

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", setting: str = "DEVICE") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device (CUDA: this rank's LOCAL_RANK unless N is given)."""
    want = "cuda" if device in ("", "auto") and torch.cuda.is_available() else ("cpu" if device in ("", "auto") else device)
    try:
        d = torch.device(want)
    except RuntimeError:
        raise GolfError(f"{setting}={device!r}: use auto, cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise GolfError(f"{setting}={device!r}: use auto, cpu, cuda or cuda:N")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise GolfError(f"{setting}={device} but no CUDA device is visible; use {setting}=cpu or auto")
        if d.index is None:
            d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(d)
    return d


def setup(device: str = "auto", setting: str = "DEVICE", tf32: bool = False) -> Dist:
    """This process's rank, world size and device; joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, setting)
    if dev.type == "cuda" and tf32:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside autocast (the baseline does too)
        torch.backends.cudnn.allow_tf32 = True
    owned = False
    if world > 1 and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif world > 1:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        owned = True
    return Dist(rank, world, local, dev, owned)


def teardown(d: Dist) -> None:
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()
