"""What the diagnostic scripts print: their result as JSON on stdout, or a user's mistake
(a VaeError) as one line on stderr with exit status 1, never a traceback."""

from __future__ import annotations

import json
import sys

from vaecli.errors import VaeError


def print_result(compute, *args):
    """Print compute(*args) as indented JSON; a VaeError exits with 'error: ...'."""
    try:
        result = compute(*args)
    except VaeError as e:
        raise SystemExit(f"error: {e}") from None
    json.dump(result, sys.stdout, indent=1)
    print()
