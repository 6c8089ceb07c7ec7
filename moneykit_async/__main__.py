"""`python -m moneykit_async ...`: the same command line as the `moneykit-async` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
