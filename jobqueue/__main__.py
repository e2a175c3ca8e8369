"""`python -m jobqueue serve|runner`."""

import sys

from jobqueue.cli import main

sys.exit(main())
