"""Evaluation: batched generation, benchmarks, metrics (keyword and judge ASR, over-refusal, utility), results."""
