"""The sampling job (jobs/sample_generator.py) on Ray Data: a class-conditional generator and its
tokenizer -> N images for each of a list of classes -> PNGs, the ADM `.npz` and a summary.

    options   its command-line options, and the step from parsed options to a checked run
    plan      classes x samples per class -> chunks of classes (the unit of work and commit), each
              chunk's seed, the files each image goes to
    model     actor stage: a chunk -> tokens (titok_core.generate) -> images (decode_tokens, uint8)
    write     CPU stage: a chunk's PNGs and its committed Parquet file
    report    driver: the batch's description (is it the paper's 50k?), the streamed npz
    metrics   gFID and Inception Score against --reference-stats, with pipelines.evaluate's FID code
    job       SampleJobConfig, the same-run check, the Ray Data pipeline, the summary

May import: the flat modules of `pipelines`, `titok_core`, from `pipelines.encode` its shard
machinery (the progress tally), and from `pipelines.evaluate` its FID code (the feature network,
reference statistics, the Frechet distance). Not `pipelines.train`, not `jobs`.
"""
