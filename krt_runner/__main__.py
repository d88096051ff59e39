import sys

from krt_runner.cli import main

sys.exit(main())
