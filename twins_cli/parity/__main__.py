"""`python -m twins_cli.parity --backend B (--model M ... | --plan FILE) --json-out OUT`: the parity worker."""
import sys

from .worker import worker_main

sys.exit(worker_main())
