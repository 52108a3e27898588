import sys

from .events import protect_stderr

# First, before torch and diffusers set up their loggers on sys.stderr.
protect_stderr()

from .cli import main  # noqa: E402

sys.exit(main())
