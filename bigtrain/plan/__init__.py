"""`bigtrain plan`: per-rank peak memory and step time of a recipe on a GPU kind, from a fake-tensor
trace of one real training iteration (trace.py), a roofline over its operators (roofline.py), the GPU
table with its efficiency factors (gpus.py), and the table and JSON line (report.py)."""

from .planner import Plan, make_plan, planned_peak

__all__ = ["Plan", "make_plan", "planned_peak"]
