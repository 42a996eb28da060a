"""Logits of a checkpoint's weights as the DeepSpeed training engine computes them (run under torchrun).

    torchrun --standalone --nproc_per_node 2 tests/engine_logits.py CHECKPOINT_DIR OUT.pt

The engine is built exactly as the trainer builds it (accelerate + DeepSpeed, the checkpoint's own config and ZeRO
stage), the checkpoint is loaded, and every rank runs the forward pass (ZeRO-3 gathers weights collectively); rank 0
saves the logits of the first validation samples. The consolidation test compares them with the HF folder's.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from gpt_novel import checkpoint, faults, parallel, plan
from gpt_novel.config import TrainConfig, load_config
from gpt_novel.data.stream import ShardSet
from gpt_novel.train import Trainer


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_config(TrainConfig, str(ckpt / "config.yaml"), {"resume": "never", "progress": False})
    planned = plan.start(cfg, parallel.world_size_from_env())
    parallel.init_process_group()
    watchdog = faults.Watchdog("engine_logits", parallel.rank_from_env(), parallel.world_size_from_env())
    watchdog.watch()
    trainer = Trainer(planned)
    checkpoint.load(trainer.engine, ckpt)
    val = ShardSet.load(planned.dataset, "val")
    batch = torch.from_numpy(np.stack([val.read(0, i) for i in range(4)]).astype(np.int64))
    trainer.engine.eval()
    with torch.no_grad():
        logits = trainer.engine(input_ids=batch[:, :-1].to(trainer.device)).logits
    if trainer.rank == 0:
        torch.save({"input_ids": batch[:, :-1], "logits": logits.cpu()}, out)
    watchdog.stop()  # before the group goes: its thread must not poll a store that is being torn down
    parallel.shutdown()


if __name__ == "__main__":
    main()
