"""edge's benchmarks: ``python -m bench`` (or ``edge bench``) runs edge, nginx, HAProxy and Caddy
as reverse proxies in front of one nginx origin, pinned to separate CPUs, and prints one table.

See bench/README.md. Modules: ``command`` (CLI), ``harness`` (the run), ``peers`` (configs and
argv per proxy), ``procs`` (processes), ``wrk`` (wrk's output), ``h2load`` (h2load's output),
``handshakes`` (the full-handshake client), ``tls`` (--https: certificate, client TLS settings,
probes), ``report`` (table, JSON, plot).
"""
