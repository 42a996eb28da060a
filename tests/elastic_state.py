"""The fp32 master weights and Adam moments a checkpoint loads into as the trainer resumes it (run under torchrun).

    torchrun --standalone --nproc_per_node N tests/elastic_state.py CHECKPOINT_DIR ZERO_JSON OUT.pt

The engine is built as the trainer builds it, with N processes and the ZeRO stage of ZERO_JSON, and the checkpoint
is loaded through the trainer's own resume path (the universal conversion when N or the stage differ from the
checkpoint's); rank 0 saves every parameter's full fp32 value, exp_avg and exp_avg_sq (gathered collectively).
"""

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from gpt_novel import faults, parallel, plan
from gpt_novel.config import TrainConfig, load_config
from gpt_novel.train import Trainer


def main() -> None:
    ckpt, zero_json, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    cfg = load_config(TrainConfig, str(ckpt / "config.yaml"),
                      {"resume": str(ckpt), "progress": False, "deepspeed": zero_json})
    planned = plan.start(cfg, parallel.world_size_from_env())
    rank = parallel.rank_from_env()
    parallel.init_process_group()
    watchdog = faults.Watchdog("elastic_state", rank, parallel.world_size_from_env())
    watchdog.watch()
    trainer = Trainer(planned)
    trainer.resume()
    state = {}
    for name, param in trainer.engine.module.named_parameters():
        state[name] = {"fp32": safe_get_full_fp32_param(param),
                       "exp_avg": safe_get_full_optimizer_state(param, "exp_avg"),
                       "exp_avg_sq": safe_get_full_optimizer_state(param, "exp_avg_sq")}
    if rank == 0:
        torch.save({name: {k: v.cpu() for k, v in values.items()} for name, values in state.items()}, out)
    watchdog.stop()  # before the group goes: its thread must not poll a store that is being torn down
    parallel.shutdown()


if __name__ == "__main__":
    main()
