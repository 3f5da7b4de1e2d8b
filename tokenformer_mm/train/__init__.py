"""The training engine, one for every domain: a small folder, one job per file.

- ``trainer.py``: the loop (``Trainer``), growth inside a run, resume;
- ``tasks.py``: what a domain plugs in (``Task``), the domain registry, ``load_run``;
- ``config.py``: the structured configs Hydra validates runs against;
- ``optim.py``: AdamW weight-decay groups and the learning-rate schedule;
- ``checkpoint.py``: atomic safetensors checkpoints, RNG state, ``load_model``;
- ``metric_log.py``: CSV files, TensorBoard, growth events, the plot;
- ``batches.py``: the resumable data cursor.

Process groups and collectives are ``tokenformer_mm.distributed``: the data pipelines and the
tasks use them too, without importing the engine.
"""

from .tasks import Task, build_task, load_run, register_domain, register_schemas
from .trainer import Trainer

__all__ = ["Task", "Trainer", "build_task", "load_run", "register_domain", "register_schemas"]
