"""The benchmark suite a user runs, as a package: from the repository root,

    python -m benchmarks.run             # the suite: tables on stdout, JSON in benchmarks/results/
    python -m benchmarks.quality --time 10m

Each module prints its numbers and the machine (benchmarks.machine), and takes --help.
Figures, with the machine each comes from, are in docs/benchmarks.md.
"""
