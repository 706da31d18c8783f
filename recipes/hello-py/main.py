"""hello-py's entry point: `python3.11 -I /app/main.py -listen :8080 -token-file PATH`.

`-I` keeps the environment (PYTHONPATH, ...) from changing what runs; it also leaves the script's
own directory off sys.path, so it is added here, explicitly.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hellopy.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
