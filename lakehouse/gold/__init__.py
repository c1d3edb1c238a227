"""Gold: the engine that builds every declared gold table (inputs and change detection, planning, tasks, commit)."""

from lakehouse.gold.build import Target, build, plan
from lakehouse.gold.inputs import Input, app_id, inputs, ref

__all__ = ["Input", "Target", "app_id", "build", "inputs", "plan", "ref"]
