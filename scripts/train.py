"""Train a Tokenformer with the shared engine; one Hydra config per domain.

python scripts/train.py --config-name vision                       # digits on a CPU, ~3 min
python scripts/train.py --config-name vision growth=double_midway  # grow x2 mid-run
python scripts/train.py --config-name vision run_dir=runs/x resume=true
torchrun --standalone --nproc_per_node 8 scripts/train.py --config-name vision ...

SIGTERM or SIGUSR1 (train.stop_signals) stops a run after its step with a checkpoint, exit code
75; run_dir=<run> resume=true continues it. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tokenformer_mm.errors import InputError, checking_inputs
from tokenformer_mm.train import Trainer, build_task, register_schemas
from tokenformer_mm.train.nonfinite import NonFiniteError
from tokenformer_mm.train.preemption import PREEMPTED_EXIT_CODE, Preempted
from tokenformer_mm.train.resume import CheckpointWriteError
from tokenformer_mm.train.run_config import resumed_config
from tokenformer_mm.train.run_dir import claim_run_dir, remove_made

register_schemas()


@hydra.main(version_base="1.3", config_path="../configs", config_name="vision")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with checking_inputs():  # the run's own config; overrides change it, if allowed
            cfg = resumed_config(cfg, HydraConfig.get().overrides.task) if cfg.resume else cfg
        with claim_run_dir(run_dir):  # a second run started in run_dir is refused
            train(cfg, run_dir)
    except BaseException as error:
        remove_made(run_dir)  # a refused start leaves no folder it made (only empty ones go)
        if isinstance(error, InputError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            raise SystemExit(f"error: {error}") from None  # a mistake in the inputs: one line
        raise  # anything else, a library bug included, keeps its traceback


def train(cfg: DictConfig, run_dir: Path) -> None:
    with checking_inputs():  # refuses a bad start before writing
        trainer = Trainer(cfg, build_task(cfg), run_dir)
    if trainer.is_main:  # the log of every start, appended
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        logging.getLogger().addHandler(handler)
    try:
        summary = trainer.fit()
    except (NonFiniteError, CheckpointWriteError) as error:  # exit non-zero, saying the fix
        logging.getLogger("tokenformer_mm").error("%s", error)
        raise SystemExit(f"error: {error}") from None
    except Preempted as stop:  # a scheduler's signal: checkpointed, exit 75 to be requeued
        logging.getLogger("tokenformer_mm").warning("%s", stop)
        if trainer.is_main:
            print(f"stopped: {stop}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    if trainer.is_main:
        metrics = ", ".join(
            f"{k} {v:.4g}" for k, v in summary["metrics"].items() if k.startswith("val/")
        )
        print(f"final validation: {metrics}")
        print(f"checkpoint: {summary['checkpoint']}")
        print(f"metrics:    {summary['metrics_csv']}")
        print(f"plot:       {summary['plot']}")


if __name__ == "__main__":
    main()
