"""A minimal MCP server on stdio (JSON-RPC, one message per line) with one tool, `echo`.

Tests commit it into a repository and list it as a routine's connector; it needs
nothing but Python's standard library, so the system's python3 runs it in the sandbox.
"""

import json
import sys


def answer(request_id: object, result: object) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    method, request_id = message.get("method"), message.get("id")
    if request_id is None:
        continue  # a notification
    if method == "initialize":
        answer(
            request_id,
            {
                "protocolVersion": message["params"].get("protocolVersion", "2024-11-05"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "probe", "version": "1.0"},
            },
        )
    elif method == "tools/list":
        answer(
            request_id,
            {
                "tools": [
                    {
                        "name": "echo",
                        "description": "Says back what it is given.",
                        "inputSchema": {
                            "type": "object",
                            "properties": {"text": {"type": "string"}},
                            "required": ["text"],
                        },
                    }
                ]
            },
        )
    elif method == "tools/call":
        said = message["params"]["arguments"].get("text", "")
        answer(request_id, {"content": [{"type": "text", "text": f"probe says {said}"}]})
    else:
        answer(request_id, {})
