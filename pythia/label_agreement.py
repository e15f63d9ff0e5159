"""Inter-provider agreement on Spark (``providers.prepare_labels``): each provider's latest
usable label per (user, country), and per provider pair and country the share of shared
users with the same gender and age bucket. The driver's twin is in ``providers_local``
(``_latest_per_provider``, ``_agreement_sums``); tests/test_providers.py compares the two.
"""
from __future__ import annotations

from typing import Any


def latest_per_provider(sdf: Any) -> Any:
    """Each provider's latest usable label per (user, country)."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    w = W.partitionBy("provider", "country", "user_id").orderBy(
        F.col("observed_date").desc(), "y_age_gender")
    return (sdf.withColumn("_rn", F.row_number().over(w)).filter("_rn = 1")
            .select("user_id", "country", "provider", "gender", "age_bucket", "y_gender",
                    "y_age", "y_age_gender", "observed_date"))


def agreement_table(latest: Any) -> list[dict]:
    """Per provider pair and country: shared users and the share with equal gender / age bucket.
    """
    from pyspark.sql import functions as F

    a = latest.select("user_id", "country", F.col("provider").alias("provider_a"),
                      F.col("y_gender").alias("g_a"), F.col("y_age").alias("a_a"))
    b = latest.select("user_id", "country", F.col("provider").alias("provider_b"),
                      F.col("y_gender").alias("g_b"), F.col("y_age").alias("a_b"))
    pairs = (a.join(b, ["user_id", "country"])
             .filter(F.col("provider_a") < F.col("provider_b"))
             .groupBy("provider_a", "provider_b", "country")
             .agg(F.count(F.lit(1)).alias("shared_users"),
                  F.avg((F.col("g_a") == F.col("g_b")).cast("double")).alias("gender_agreement"),
                  F.avg((F.col("a_a") == F.col("a_b")).cast("double")).alias("age_agreement"))
             .orderBy("provider_a", "provider_b", "country"))
    return [r.asDict() for r in pairs.collect()]
