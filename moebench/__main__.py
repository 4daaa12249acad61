"""python -m moebench <command> ...: the same entry point as the `moebench` console script."""

from moebench.bench.cli import main

raise SystemExit(main())
