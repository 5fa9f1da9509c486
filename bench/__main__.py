"""`python -m bench`: the webhook benchmark (see bench/load.py); `python -m bench.graph` is
the dependency-map benchmark."""

from bench.load import main

raise SystemExit(main())
