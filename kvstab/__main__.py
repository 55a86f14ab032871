import sys

from kvstab.cli import main

sys.exit(main())
