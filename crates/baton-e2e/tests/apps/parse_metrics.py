"""Reads an exposition of baton's /metrics on stdin and parses it with the
prometheus_client package: its strict OpenMetrics parser (what the text
claims to be) and its Prometheus text-format parser (what older scrapers
use). Either raising fails the test. Prints every sample as a JSON line:
{"family": ..., "type": ..., "name": ..., "labels": {...}, "value": ...}.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

text = sys.stdin.read()
families = list(openmetrics_families(text))
list(text_families(text))
for family in families:
    for sample in family.samples:
        print(
            json.dumps(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
            )
        )
