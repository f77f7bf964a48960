"""Thin entry points: parse arguments, build from `titok_core` / `pipelines`, run.

Each job is `python jobs/<name>.py --help` (or `python -m jobs.<name>`) and exposes
`main(argv: list[str] | None = None) -> int`; each file reads top to bottom in about 150 lines.

May import: `pipelines` and `titok_core`. Nothing imports `jobs` except tests and benchmarks
(the top layer of the import-linter contract in pyproject.toml).
"""
