"""`python -m benchmarks.protocol`: see benchmarks/protocol/__init__.py."""

import sys

from .cli import main

sys.exit(main())
