"""Metrics: the contract (:mod:`gmbench.metrics.base`) and the built-in metrics."""

from gmbench.metrics.base import EvalContext, Metric, MetricError, MetricOutput, MetricSkipped

__all__ = ["EvalContext", "Metric", "MetricError", "MetricOutput", "MetricSkipped"]
