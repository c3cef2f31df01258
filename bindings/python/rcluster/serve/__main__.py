"""``python -m rcluster.serve``: the same as the ``rcluster-serve`` command."""

from . import main

raise SystemExit(main())
