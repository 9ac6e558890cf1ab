"""`python -m gateway.cli`: the same group as the `promptintern` console script."""

import sys

from gateway.cli import main

sys.exit(main())
