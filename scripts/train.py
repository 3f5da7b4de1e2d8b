"""Train a Tokenformer with the shared engine; one Hydra config per domain.

python scripts/train.py --config-name vision                       # digits on a CPU, ~3 min
python scripts/train.py --config-name vision growth=double_midway  # grow x2 mid-run
python scripts/train.py --config-name vision run_dir=runs/x resume=true
torchrun --standalone --nproc_per_node 8 scripts/train.py --config-name vision ...
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tokenformer_mm.train import Trainer, build_task, register_schemas
from tokenformer_mm.train.nonfinite import NonFiniteError

register_schemas()


@hydra.main(version_base="1.3", config_path="../configs", config_name="vision")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trainer = Trainer(cfg, build_task(cfg), run_dir)  # refuses a bad start before writing
    if trainer.is_main:  # the log of every start, appended
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        logging.getLogger().addHandler(handler)
    try:
        summary = trainer.fit()
    except NonFiniteError as error:  # a diverged run: exit non-zero, saying where to resume
        logging.getLogger("tokenformer_mm").error("%s", error)
        raise SystemExit(f"error: {error}") from None
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
