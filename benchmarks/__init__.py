"""cmrt's benchmark suites (``cmrt bench``): every backend side by side with what users run today.

A folder of the source checkout, not installed with cmrt: ``cmrt bench`` (``cmrt/bench.py``) runs
it from the checkout, and ``python -m benchmarks.<module>`` from the checkout's root. Nothing under
``cmrt/`` imports it. ``cases`` is the leaf every other module shares (models, cases, digests,
bundles); no module imports one that imports it back.
"""
