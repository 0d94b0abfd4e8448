"""Evaluation: run methods x metrics over datasets, store the results, rank the methods.

- :mod:`~mmxai.evaluation.evaluator`: one shared trace per sample, every method on it, every
  metric on every method's maps; failures recorded, never fatal;
- :mod:`~mmxai.evaluation.store`: the append-only SQLite store (resume, shards);
- :mod:`~mmxai.evaluation.leaderboard` and :mod:`~mmxai.evaluation.stats`: the table with
  bootstrap intervals and paired tests; :mod:`~mmxai.evaluation.tables` writes it out.
"""

from mmxai.evaluation.evaluator import Evaluator, NamedMetric, Shard, Summary
from mmxai.evaluation.leaderboard import Leaderboard, build, leaderboard, load_rows
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.evaluation.tables import print_table, write_all

__all__ = [
    "Evaluator", "Leaderboard", "NamedMetric", "ResultStore", "Row", "RunKey", "Shard",
    "Summary", "build", "leaderboard", "load_rows", "print_table", "write_all",
]
