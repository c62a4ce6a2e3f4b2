import sys

from wwwserve.cli import main

sys.exit(main())
