"""The HTTP control API: both dialects over one core."""
