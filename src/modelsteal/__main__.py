import sys

from modelsteal.cli.main import main

sys.exit(main())
