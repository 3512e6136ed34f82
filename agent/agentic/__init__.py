"""The agent (`plmlabel label --agent`): it tests its own hypotheses on the validation half, then commits.

view.py            AgentView: what the agent may see (examples, validation half; never the test half)
hypothesis.py      Rule: a hypothesis as a predicate over Swiss-Prot metadata (the baseline agent's)
tools.py           the tools (pydantic argument models) and the Toolbox that runs them within limits
loop.py            run_agent: an LLM converses with the tools, bounded by the limits
baseline_agent.py  the offline agent: enriched concepts, singly and in pairs, tried on validation
trace.py           the trace JSON (TRACE.md contract) stored in labels.trace
"""
