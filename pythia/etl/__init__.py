"""Spark jobs of the data side: session, hourly join, splits/resampling/power users, reconciliation.

``session`` builds the SparkSession; ``hourly`` turns impression partitions into labelled,
feature-derived rows; ``splits`` writes the four training splits; ``reconcile`` proves every
input row is accounted for. ``sample`` writes tiny hand-made sources in the contract layout.
"""
