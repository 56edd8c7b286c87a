"""Scale out on existing engines: Ray Data for labelling large image sets (``ray_batch``).

Imports Ray only when a job runs (the ``[ray]`` extra); the runtime install stays without it.
"""
