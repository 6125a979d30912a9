import sys

from umlrun.cli import main

sys.exit(main())
