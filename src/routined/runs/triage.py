"""Stage: the trigger's triage gate, asked before anything else of the run."""

from __future__ import annotations

from routined import gate
from routined.runs.failure import Failure
from routined.runs.ledger import Ledger
from routined.runs.scope import Host, RunSpec


async def passes_gate(host: Host, spec: RunSpec, ledger: Ledger) -> bool:
    """Ask the trigger's gate; a run it turns away ends as skipped, with its answer."""
    assert spec.gate is not None
    settings = host.settings
    result = await gate.evaluate(
        prompt=spec.gate.prompt,
        text=spec.text,
        source=spec.trigger_type,
        on_error=spec.gate.on_error,
        base_url=settings.gate_base_url,
        api_key=settings.anthropic_api_key.reveal(),
        model=settings.gate_model,
    )
    if result.proceed:
        await ledger.event("gate.passed", result.reason)
        return True
    await ledger.skip(f"{Failure.SKIPPED}: gate: {result.reason}", result.reason)
    return False
