"""The Metric interface: each metric says its name and which direction is better.

The leaderboard reads ``higher_is_better`` and ``category`` instead of special-casing names
(the Quantus pattern).
"""

from __future__ import annotations

from typing import ClassVar


class Metric:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: "localisation", "faithfulness", "sanity" or "cost".
    category: ClassVar[str] = ""
    citation: ClassVar[str] = ""
