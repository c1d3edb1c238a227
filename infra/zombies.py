"""Mark a flow run whose process died (its worker or machine gone) as Crashed, instead of "Running" forever.

Flow runs emit a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (``infra/env.sh`` sets 30). This
makes the automation Prefect documents for self-hosted servers ("detect zombie flows"): a flow run that has sent a
heartbeat and then neither another one nor a final state within ``LAKEHOUSE_ZOMBIE_SECONDS`` (default: three
heartbeats) is set to Crashed. A crashed run releases the deployment's concurrency slot, so the next run is not
blocked behind it. Idempotent: ``infra/up.sh`` runs it every time, replacing the automation with the current window.
"""

from __future__ import annotations

import os
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

NAME = "lakehouse: crash zombie flow runs"


def window_seconds() -> int:
    heartbeat = int(os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30"))
    return int(os.environ.get("LAKEHOUSE_ZOMBIE_SECONDS", str(3 * heartbeat)))


def automation(seconds: int) -> Automation:
    return Automation(
        name=NAME,
        description=f"A flow run silent for {seconds}s after a heartbeat (its process is gone) is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=seconds),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {seconds}s: the flow run's process is gone (worker or machine down). Its "
                    "tables are as its last commit left them; the next run picks up from there.",
        )],
    )


def main() -> None:
    seconds = window_seconds()
    while True:  # replace every earlier one (an older window)
        try:
            Automation.read(name=NAME).delete()
        except ValueError:  # none left
            break
    automation(seconds).create()
    print(f"Automation '{NAME}' ready: a flow run silent for {seconds}s is marked Crashed")


if __name__ == "__main__":
    main()
