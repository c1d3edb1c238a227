"""Gold: the engine that builds every declared gold table (inputs and change detection, planning, tasks, commit)."""

from lakehouse.gold.inputs import Input, app_id, inputs, ref
from lakehouse.gold.stage import Target, build, plan

__all__ = ["Input", "Target", "app_id", "build", "inputs", "plan", "ref"]
