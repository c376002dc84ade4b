"""``python -m bench`` (``make bench``): the benchmark of issue 12. See bench/run.py."""

from bench.run import main

main()
