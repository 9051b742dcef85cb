"""Benchmark harness: turnstore against Redis Streams and raw LMDB.

``python -m bench.run`` (``make bench``) orchestrates one run: it starts the
daemon and a Redis server, spawns ``python -m bench.client`` processes as load
generators, samples the servers' memory, prints a table and writes JSON to
``bench/results/``. See ``bench/README.md``.
"""
