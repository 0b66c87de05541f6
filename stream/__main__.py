"""`python -m stream` = `klaviyo-stream`."""

import sys

from stream.cli import main

sys.exit(main())
