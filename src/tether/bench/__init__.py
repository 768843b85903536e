"""`tether bench` and `tether demo`: the paper's experiments in miniature (config, pipeline stages, report)."""
