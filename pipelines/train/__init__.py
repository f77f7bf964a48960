"""Tokenizer training (jobs/train_tokenizer.py) on Ray Train: the two TiTok stages.

    recipes   the paper's schedules per model size, as frozen dataclasses
    config    TrainJobConfig (what every worker receives), ConfigError, the names of a run's files
    job       driver side: resolve and check a run before any worker starts, then TorchTrainer
    data      the proxy dataset -> per-worker batches of (view crop, its codes)
    optim     AdamW groups, the cosine schedule, mixed precision, DDP, ScheduledOptimizer
    stages    Stage1Task / Stage2Task: models, losses, one optimizer step, grids, export
    loop      the per-worker loop every task shares: resume, steps, metrics, checkpoints, export
    outputs   metrics (JSONL / CSV / TensorBoard), image grids, staging for object-store outputs

May import: the flat modules of `pipelines` and `titok_core`. Not `pipelines.encode`, not `jobs`.
"""
