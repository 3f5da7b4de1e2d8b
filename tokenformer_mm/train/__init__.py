"""The training engine, one for every domain: a small folder, one job per file.

- ``trainer.py``: the loop (``Trainer``), growth inside a run;
- ``resume.py``: the checkpoint protocol (the run's stateful parts, saved and put back);
- ``tasks.py``: what a domain plugs in (``Task``), the domain registry, ``load_run``;
- ``config.py``: the structured configs Hydra validates runs against;
- ``optim.py``: AdamW weight-decay groups and the learning-rate schedule;
- ``start.py``: the start-up steps (where a run starts from, precision, FLOPs, the schedule's
  position);
- ``run_dir.py``: the run's folder before Hydra makes it (an unwritable one named), and the
  folders a refused start made, removed;
- ``checkpoint.py``: safetensors checkpoints, ``load_model``, ``export``; ``sharded.py``: FSDP2's
  format; ``atomic.py``: publishing a checkpoint; ``rng.py``: the RNG states an exact resume needs;
- ``parallel.py``: DDP and FSDP2, whole copies of a sharded model;
- ``metric_log.py``: CSV files, TensorBoard, growth events, the plot;
- ``batches.py``: the resumable data cursor.

Process groups and collectives are ``tokenformer_mm.distributed``: the data pipelines and the
tasks use them too, without importing the engine.
"""

from .tasks import Task, build_task, load_run, register_domain, register_schemas
from .trainer import Trainer

__all__ = ["Task", "Trainer", "build_task", "load_run", "register_domain", "register_schemas"]
