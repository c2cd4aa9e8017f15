"""Evaluation: sweeps, threat models, baselines, statistics, sanity checks, and their
orchestration.
"""
