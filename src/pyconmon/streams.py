"""The container's output streams, numbered as conmon numbers them everywhere.

The numbers are the stream byte of every attach packet (CONTRACT 4) and
what the output callbacks, log writers, rate limit and metrics key on:
2 is stdout, 3 stderr (conmon's ``STDOUT_PIPE``/``STDERR_PIPE``).
"""

STDOUT, STDERR = 2, 3
NAMES = {STDOUT: "stdout", STDERR: "stderr"}  # the k8s-file stream field, the metrics label

__all__ = ["NAMES", "STDERR", "STDOUT"]
