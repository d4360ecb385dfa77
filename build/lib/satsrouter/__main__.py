import sys

from satsrouter.cli import main

sys.exit(main())
