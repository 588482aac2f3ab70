"""Ansible module: run a command in a libvirt guest through qemu-guest-agent (no network needed).

Options: ``domain``; ``argv`` (the command; empty: only wait for the agent);
``contains`` (strings the output must contain: the module retries until they appear);
``deadline`` (seconds to wait for the agent and ``contains``); ``uri``.
Returns ``rc``, ``stdout``, ``stderr``; never ``changed``. Fails only when the
agent does not answer, or ``contains`` is not met, before the deadline.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-not-found]


class AgentError(Exception):
    pass


def agent(uri: str, domain: str, command: dict[str, Any], timeout: int = 10) -> Any:
    proc = subprocess.run(["virsh", "-c", uri, "qemu-agent-command", domain, json.dumps(command),
                           "--timeout", str(timeout)], capture_output=True, text=True, timeout=timeout + 30)
    if proc.returncode != 0:
        raise AgentError(proc.stderr.strip() or f"virsh exit status {proc.returncode}")
    return json.loads(proc.stdout)["return"]


def run(uri: str, domain: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
    pid = agent(uri, domain, {"execute": "guest-exec",
                              "arguments": {"path": argv[0], "arg": argv[1:], "capture-output": True}})["pid"]
    end = time.monotonic() + timeout
    while True:
        st = agent(uri, domain, {"execute": "guest-exec-status", "arguments": {"pid": pid}})
        if st.get("exited"):
            out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
            return int(st.get("exitcode", -1)), out, err
        if time.monotonic() > end:
            raise AgentError(f"{argv[0]} did not finish within {timeout} s")
        time.sleep(0.2)


def main() -> None:
    module = AnsibleModule(argument_spec={
        "domain": {"type": "str", "required": True},
        "argv": {"type": "list", "elements": "str", "default": []},
        "contains": {"type": "list", "elements": "str", "default": []},
        "deadline": {"type": "float", "default": 60.0},
        "command_timeout": {"type": "float", "default": 60.0},
        "uri": {"type": "str", "default": "qemu:///system"},
    }, supports_check_mode=True)
    p = module.params
    end = time.monotonic() + p["deadline"]
    last = "no attempt"
    while True:
        try:
            if not p["argv"]:
                agent(p["uri"], p["domain"], {"execute": "guest-ping"})
                module.exit_json(changed=False, rc=0, stdout="", stderr="")
            rc, out, err = run(p["uri"], p["domain"], p["argv"], p["command_timeout"])
            missing = [s for s in p["contains"] if s not in out]
            if not missing:
                module.exit_json(changed=False, rc=rc, stdout=out, stderr=err)
            last = f"output lacks {missing}: {out.strip()[-500:]}"
        except (AgentError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
            last = str(e)
        if time.monotonic() > end:
            module.fail_json(msg=f"guest {p['domain']}: {last} (after {p['deadline']:.0f} s)")
        time.sleep(2)


if __name__ == "__main__":
    main()
