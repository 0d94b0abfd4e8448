"""Metric plugins: localisation, faithfulness, sanity and cost."""
