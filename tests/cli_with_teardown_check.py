"""`dreambooth.cli`, for launched tests, reporting at each process group's teardown how many DDP-wrapped models
are still alive: one freed after the group is gone takes gloo's teardown into its destructor, which can hang."""

import gc
import sys

import torch.distributed
from torch.nn.parallel import DistributedDataParallel

from dreambooth.cli import main

destroy_process_group = torch.distributed.destroy_process_group


def checked_destroy(*args, **kwargs):
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    print(f"process group destroyed with {alive} DDP models alive", file=sys.stderr, flush=True)
    destroy_process_group(*args, **kwargs)


torch.distributed.destroy_process_group = checked_destroy

if __name__ == "__main__":
    sys.exit(main())
