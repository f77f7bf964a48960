"""The evaluation job (jobs/evaluate_tokenizer.py): reconstruction quality by the paper's protocol on Ray Data.

    protocol   the protocol every result records, the paper's rFID per model size
    features   the FID feature network (torch-fidelity's Inception-v3), its weights, the Frechet distance
    stats      a shard's statistics file: feature moments (float64) and token histogram, merged by addition
    grids      worst / best candidates per shard and the worst.png / best.png grids
    measure    actor stage: centre crop -> encode -> decode -> uint8 -> PSNR, SSIM, LPIPS, features
    write      CPU stage: per-image Parquet + side files, committed per shard
    report     driver: merge the committed shards, metrics.json, metrics.md, reference statistics
    job        EvaluateJobConfig, the output check, the run

May import: the flat modules of `pipelines`, `titok_core`, and from `pipelines.encode` its shard
machinery (job planning / stages / summary, decoding, options, the model's inference layout).
Not `pipelines.train`, not `jobs`.
"""
