import sys

from mmrag.cli.main import main

sys.exit(main())
