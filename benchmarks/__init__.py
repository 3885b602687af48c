"""cmrt's benchmark suites (``cmrt bench``): every backend side by side with what users run today.

Kept apart from the runtime: nothing under ``cmrt/`` imports this package.
"""
