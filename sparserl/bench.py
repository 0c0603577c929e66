"""`python -m sparserl.bench`: the benchmark table, whose rows live in `sparserl.experiments.bench`."""

import sys

from sparserl.experiments.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
