"""The pipeline's stages, each run by dvc as `python -m stages.<name>` (dvc.yaml)."""

import sys

from classifier.core.errors import exit_cleanly_while_starting

# Python sets argv[0] to "-m" while it finds the module of `python -m stages.X`: a stage starting, not a test
# importing one. A signal during the stage's imports then ends it with one line.
if sys.argv[:1] == ["-m"]:
    exit_cleanly_while_starting()
