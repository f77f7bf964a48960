"""Thin entry points: parse arguments, build from `titok_core` / `pipelines`, run.

Each job is `python -m jobs.<name> --help` and exposes `main(argv: list[str] | None = None) -> int`.
"""
