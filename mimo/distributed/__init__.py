"""Parallelism: ParallelContext (sizes, ranks, groups); world size 1 needs no process group."""
