"""Ray Data / Ray Train wiring, the CPU-side stages it calls, and storage.

Holds (flat: what every job uses)
    storage      local paths and fsspec URLs (s3://, gs://, http(s)://): reads, atomic writes, the cache
    schema       every dataset column, the dataset metadata record, the rows between Ray stages
    quarantine   why a sample was dropped: the reasons and the record
    tar_reader   one WebDataset shard -> samples and quarantine records, never an exception
    shards       pack an image folder into deterministic WebDataset shards
    preprocess   bytes -> base image -> view crop -> model input: every pixel a model sees
    commit       per-shard outputs and success records: exactly-once reruns
    runtime      logging, one-line failures, Ray start-up, forwarded env, devices, loading a model by URI
    demo_data, demo_report, demo_teacher, demo_generator   the demo: its images, its teacher, its generator step, its report
Sub-packages
    encode/      the shard jobs (precompute_proxy, tokenize_dataset): decode -> model -> write
    evaluate/    the evaluation job (evaluate_tokenizer): reconstruction quality on the shard machinery
    train/       training on Ray Train (tokenizer stages 1 and 2, the generator): recipes, data, tasks, loop, outputs
    sample/      the sampling job (sample_generator): classes -> seeded chunks -> images, the ADM npz, gFID / IS

May import: titok_core, ray, pyarrow, fsspec, numpy, torch, PIL and the other libraries of the
project's dependencies. Never imports `jobs` (the entry points import us). `encode` and `train`
are independent of each other; `evaluate` builds on `encode` and is independent of `train`. These rules are contracts checked by import-linter
(`[tool.importlinter]` in pyproject.toml, run by tests/test_architecture.py).
"""
