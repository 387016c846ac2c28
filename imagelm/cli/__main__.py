"""`python -m imagelm.cli VERB ...` (and `torchrun ... -m imagelm.cli -- VERB ...`)."""
import sys

from imagelm.cli import main

sys.exit(main())
