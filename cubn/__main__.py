"""``python -m cubn`` is the ``cubn`` command (``cubn train``, ``cubn info``); see ``cubn/cli.py``."""
import sys

from .cli import main

sys.exit(main())
