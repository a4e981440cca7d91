"""Reading what the processor stored: the feed (``feed``), shared by ``serve`` and ``tail``."""
