"""What running on a platform costs: the price table of ``server_config.prices``.

Each catalog platform carries its default :class:`Prices` (:data:`fedkeeper.function.catalog.PLATFORMS`);
``server_config.prices.<platform>`` overrides any of its three figures. The defaults are public list
prices in US dollars (see README, *Cost*): self-hosted platforms (OpenWhisk and the local fabric,
SSH hosts, the edge fleet) cost nothing by default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fedkeeper.function.settings import _Model

CURRENCY = "USD"
GB = 1024**3

Price = Annotated[float, Field(ge=0)]


class Prices(_Model):
    """One platform's prices, in :data:`CURRENCY`.

    Attributes
    ----------
    gb_second
        Per GB-second: billed duration times configured memory.
    invocation
        Per invocation the platform accepted.
    gb_transferred
        Per GB the function moves to or from the store.
    """

    gb_second: Price = 0.0
    invocation: Price = 0.0
    gb_transferred: Price = 0.0


FREE = Prices()
# Google Cloud Functions 1st gen, Tier 1, as listed at cloud.google.com/functions/pricing (2024):
# the 1024 MB / 1.4 GHz tier's $0.00000165 per 100 ms is $0.0000165 per GB-second (memory and CPU
# together), $0.40 per million invocations, $0.12 per GB of egress.
GCF_GEN1 = Prices(gb_second=0.0000165, invocation=0.0000004, gb_transferred=0.12)
# AWS Lambda on x86 in us-east-1, as listed at aws.amazon.com/lambda/pricing (2024): $0.0000166667
# per GB-second, $0.20 per million requests; data out to the internet $0.09 per GB (first 10 TB).
LAMBDA_X86 = Prices(gb_second=0.0000166667, invocation=0.0000002, gb_transferred=0.09)
