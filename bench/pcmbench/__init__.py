"""The benchmark of pyconmon against C conmon, in three parts (bench/bench.py drives them).

- run: ``bench.py`` sets up (builds pyconmon as installed, the rootfs, the
  runtime probe), then runs every selected section round by round;
  ``container.Run`` is one container under one monitor, started as Podman
  starts it.
- measure: ``sections/`` (one module per table; ``sections.REGISTRY``);
  ``workloads`` and ``verify`` say what the container writes and check that
  every byte of it arrived; ``system`` reads the kernel's figures.
- report: ``results`` (samples, failures, the A B B A order, medians) and
  ``report`` (the table, the JSON, docs/performance.md and the README's
  Performance table, with limits read from pyconmon's modules).
"""
