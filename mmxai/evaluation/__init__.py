"""Evaluation: run methods x metrics over datasets, store the results, rank the methods.

- :mod:`~mmxai.evaluation.spec`: a run's settings as one frozen object (``RunSpec``) and
  the part of the samples one process takes (``Shard``);
- :mod:`~mmxai.evaluation.evaluator`: one shared trace per sample, every method on it, every
  metric on every method's maps; failures recorded, never fatal; a sample's way through it
  and batched generation are in :mod:`~mmxai.evaluation.jobs`, what it says goes to a
  :mod:`~mmxai.evaluation.report` reporter;
- :mod:`~mmxai.evaluation.store`: the append-only SQLite store (resume, shards), with
  :mod:`~mmxai.evaluation.provenance`;
- :mod:`~mmxai.evaluation.leaderboard` and :mod:`~mmxai.evaluation.stats`: the table with
  bootstrap intervals and paired tests; :mod:`~mmxai.evaluation.tables` writes it out.
"""

from mmxai.evaluation.evaluator import Evaluator, NamedMetric, Summary
from mmxai.evaluation.leaderboard import Leaderboard, build, leaderboard, load_rows
from mmxai.evaluation.report import ConsoleReporter, Reporter
from mmxai.evaluation.spec import Generation, RunSpec, Selection, Shard
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.evaluation.tables import print_table, write_all

__all__ = [
    "ConsoleReporter", "Evaluator", "Generation", "Leaderboard", "NamedMetric", "Reporter",
    "ResultStore", "Row", "RunKey", "RunSpec", "Selection", "Shard", "Summary", "build",
    "leaderboard", "load_rows", "print_table", "write_all",
]
