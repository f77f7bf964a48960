"""The shard-encoding jobs (jobs/precompute_proxy.py, jobs/tokenize_dataset.py) on Ray Data.

    options   their command-line options and the step from parsed options to a run
    job       EncodeJobConfig, planning (skip committed shards), the Ray Data pipeline, the summary
    decode    CPU stage: a shard -> base images + quarantine records
    model     actor stage: base images -> codes for every view (teacher or tokenizer)
    write     CPU stage: codes -> one committed Parquet file per shard

May import: the flat modules of `pipelines` and `titok_core`. Not `pipelines.train`, not `jobs`.
"""
