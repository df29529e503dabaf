"""taskd: an asyncio task scheduler daemon."""

__version__ = "0.1.0"
