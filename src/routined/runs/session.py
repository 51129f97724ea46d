"""Stage: the agent's session (Claude Code, or an agent CLI) in its sandbox, within
the run's limits and caps; it says how the session ended.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routined.agents.claude import ClaudeOptions, run_session
from routined.agents.command import STDERR_LINE_LIMIT, run_command
from routined.agents.home import learn_seed
from routined.agents.prompt import build_prompt, system_prompt_addition
from routined.agents.session import Launch, SessionOutcome
from routined.runs import confine
from routined.runs.failure import Failure, RunFailure
from routined.runs.scope import Limits, Scope
from routined.runs.state import RunStatus
from routined.sandbox import bubblewrap, resources

_STDERR_LINES = 200


@dataclass
class Ending:
    """How the agent's part of a run ended: `status` is the run's end unless delivery
    fails, `error` why it did not succeed (None: it did)."""

    status: RunStatus = RunStatus.SUCCEEDED
    error: str | None = None
    outcome: SessionOutcome | None = None

    @classmethod
    def failed(cls, error: str, outcome: SessionOutcome | None = None) -> Ending:
        return cls(RunStatus.FAILED, error, outcome)


async def run_agent(scope: Scope) -> Ending:
    """Run the session in its sandbox, within the run's limits; say how it ended.

    However the session ends, its sandbox is gone before this returns: nothing
    the agent started can touch the workspace while its work is delivered.
    """
    host, spec, run_dir, checkouts = scope.host, scope.spec, scope.run_dir, scope.checkouts
    if not host.settings.anthropic_api_key:
        raise RunFailure(Failure.AGENT_FAILED, "ANTHROPIC_API_KEY is not set for routined")
    assert scope.group is not None
    group = scope.group
    claude = confine.claude(host.settings)
    env = bubblewrap.agent_environment(
        home=run_dir / "home",
        tmp=run_dir / "tmp",
        extra={**host.author_env(), **spec.environment.agent_variables(scope.revealed)},
    )
    launcher = run_dir / "private" / "launch-agent"
    command = list(spec.agent.command) if spec.agent.command else None
    program = Path(command[0]) if command else claude
    layout = confine.layout(scope)
    bubblewrap.write_launcher(
        launcher,
        run_id=spec.run_id,
        command=group.enter_command(confine.sandboxed(scope, layout, program)),
        keep=[*env, "ROUTINED_PROMPT_FILE"],
    )
    stderr: deque[str] = deque(maxlen=_STDERR_LINES)  # its last lines say why it died

    def on_stderr(line: str) -> None:
        stderr.append(line.rstrip()[:STDERR_LINE_LIMIT])

    async def on_message(kind: str, data: dict[str, Any]) -> None:
        await scope.ledger.event(kind, None, **data)

    prompt = build_prompt(spec.prompt, spec.text, source=spec.trigger_type)
    limits = spec.limits
    ending = Ending()
    timeout = asyncio.timeout_at(scope.deadline)
    enforcing = asyncio.create_task(confine.enforce_caps(group, run_dir))
    breach: resources.Breach | None = None
    try:
        async with timeout:
            launch = Launch(
                prompt=prompt,
                launcher=launcher,
                cwd=checkouts[0].path,
                env=env,
                on_message=on_message,
                on_stderr=on_stderr,
            )
            if command:
                agent = run_command(launch, command, tmp=run_dir / "tmp", owner=host.owner)
            else:
                agent = run_session(launch, _claude_options(scope))
            outcome = await _sandbox_first(agent, run_dir, timeout)
        ending.outcome = outcome
        if outcome.limit is not None:
            ending = Ending.failed(_budget_error(outcome, limits), outcome)
        elif outcome.error is not None:
            ending = Ending.failed(f"{Failure.AGENT_FAILED}: {outcome.error}", outcome)
        if outcome.agent_session_id:
            await scope.ledger.note_agent_session(outcome)
    except Exception as error:  # noqa: BLE001 - the SDK raises several kinds for a dead CLI
        said = " | ".join(scope.redactor.text(line) for line in list(stderr)[-5:])
        ending = Ending.failed(
            f"{Failure.AGENT_FAILED}: {type(error).__name__}: {error}"
            + (f" (stderr: {said})" if said else "")
        )
        if isinstance(error, TimeoutError) and timeout.expired():
            limit, source = scope.max_duration()
            took = confine.ago(limit)
            ending = Ending(
                RunStatus.TIMED_OUT, f"{Failure.TIMED_OUT}: stopped after {took} ({source})"
            )
    finally:
        breach = await confine.stop(enforcing, group, run_dir)
    if breach is not None:
        # Whatever the agent said as it was stopped, the cap is why it ended.
        ending = Ending.failed(str(breach), ending.outcome)
    if ending.error is None and not command:
        await asyncio.to_thread(learn_seed, run_dir / "home", host.seed_file)
    if stderr:
        await scope.ledger.event(
            "agent.stderr", f"its last {len(stderr)} lines", lines=list(stderr)
        )
    return ending


async def _sandbox_first(
    agent: Coroutine[Any, Any, SessionOutcome], run_dir: Path, deadline: asyncio.Timeout
) -> SessionOutcome:
    """The session's outcome; if the run is cancelled meanwhile, its sandbox's
    processes are ended before the session is.

    Cancelled, the Agent SDK closes Claude Code's stdin and waits 5 s for it to exit
    before it signals it, and Claude Code waiting on the model does not exit on EOF:
    a cancel would take 5 s more. Killed first, the SDK finds it gone. The run's
    deadline keeps the SDK's grace (Claude Code finishes writing its transcript); a
    cap's breach kills at once already (`confine.enforce_caps`).
    """
    session = asyncio.ensure_future(agent)
    try:
        # Shielded: a cancel reaches this task first, so the sandbox can go first.
        return await asyncio.shield(session)
    except asyncio.CancelledError:
        try:
            if not deadline.expired():
                await bubblewrap.stop(f"{run_dir}/")
        finally:
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
        raise


def _claude_options(scope: Scope) -> ClaudeOptions:
    spec, checkouts = scope.spec, scope.checkouts
    repositories = [
        (c.path, rules.prefix, spec.own_branch(number))
        for number, (c, rules) in enumerate(zip(checkouts, spec.push_rules, strict=True))
    ]
    return ClaudeOptions(
        system_addition=system_prompt_addition(routine=spec.routine, repositories=repositories),
        model=spec.model,
        add_dirs=tuple(c.path for c in checkouts[1:]),
        max_turns=spec.limits.max_turns,
        max_cost_usd=spec.limits.max_cost_usd,
        mcp_servers=spec.connectors,
    )


def _budget_error(outcome: SessionOutcome, limits: Limits) -> str:
    if outcome.limit == "max_turns":
        return (
            f"{Failure.BUDGET}: stopped at max_turns {limits.max_turns} "
            f"({outcome.turns} turns taken)"
        )
    spent = f"${outcome.cost_usd:.4f}" if outcome.cost_usd is not None else "unknown"
    return f"{Failure.BUDGET}: stopped at max_cost_usd {limits.max_cost_usd} ({spent} spent)"
