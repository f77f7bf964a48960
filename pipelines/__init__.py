"""Ray Data / Ray Train wiring and the CPU-side stages it calls.

The only package that touches fsspec / object-store URLs. One stage per file: a pure function
for CPU work (decode, crop, read a shard), a callable class for model work.
"""
