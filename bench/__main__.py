"""python -m bench {collectives,kernels,moe,report} ... (see bench/cli.py)."""

from bench.cli import main

raise SystemExit(main())
