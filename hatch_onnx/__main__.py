import sys

from hatch_onnx.cli import main

sys.exit(main())
