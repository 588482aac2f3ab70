"""The demo: two QEMU guests and an outside host pinging each other through vhost-ipvlan.

Run it with ``sudo scripts/run demo`` (which sets everything up first). It builds a
veth master in a private network namespace, starts the daemon on it in l2/bridge
mode, boots two tiny TCG guests (one per vhost-user socket role), pings in every
direction over IPv4 and IPv6, prints each result and the daemon's counters, and
tears everything down.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.guest import Guest
from tests.support.lab import OUT_IP, OUT_IP6, Lab, SlaveSpec

VMS = {
    "vm1": ("192.0.2.10", "2001:db8::10", "52:54:00:00:00:10", "server"),
    "vm2": ("192.0.2.11", "2001:db8::11", "52:54:00:00:00:11", "client"),
}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="vhost-ipvlan-demo-"))
    slaves = [SlaveSpec(n, [f"{v4}/24", f"{v6}/64"], mac, socket_mode=role) for n, (v4, v6, mac, role) in VMS.items()]
    print(f"demo: work directory {tmp}")
    failures = 0
    with Lab(tmp, slaves) as lab:
        print(f"demo: master vim0 ({lab.master_mac}) in namespace {lab.host}; outside host {OUT_IP} / {OUT_IP6} "
              f"in namespace {lab.out}")
        guests = {
            n: Guest(n, tmp, vhost_socket=lab.sock(n), socket_server=(role == "client"), mac=mac,
                     ip4=f"{v4}/24", ip6=f"{v6}/64")
            for n, (v4, v6, mac, role) in VMS.items()
        }
        try:
            t0 = time.monotonic()
            for g in guests.values():
                g.start()
            for g in guests.values():
                g.wait_ready(180)
            print(f"demo: guests booted (TCG) in {time.monotonic() - t0:.1f} s")
            checks: list[tuple[str, str, Guest | None]] = []
            for name, g in guests.items():
                checks += [(name, OUT_IP, g), (name, OUT_IP6, g)]
            checks += [("vm1", VMS["vm2"][0], guests["vm1"]), ("vm2", VMS["vm1"][1], guests["vm2"])]
            for v4, v6, _, _ in VMS.values():
                checks += [("outside", v4, None), ("outside", v6, None)]
            for src, dst, pinger in checks:
                if pinger is not None:
                    rc, out = pinger.run(f"ping -c 3 -W 5 {dst}", timeout=60)
                else:
                    proc = lab.out_run("ping", "-c", "3", "-W", "5", dst, timeout=60)
                    rc, out = proc.returncode, proc.stdout + proc.stderr
                summary = next((ln for ln in out.splitlines() if "packets transmitted" in ln), out.strip()[-80:])
                failures += rc != 0
                print(f"  {'ok  ' if rc == 0 else 'FAIL'} {src:>7} -> {dst:<14} {summary.strip()}")
            stats = lab.stats()["vim0"]
            print("demo: counters (vhost-ipvlan)")
            for name, s in stats["slaves"].items():
                print(f"  {name}: rx {s['rx_packets']} pkts / {s['rx_bytes']} B, tx {s['tx_packets']} pkts / "
                      f"{s['tx_bytes']} B, drops {s['drops'] or 'none'}")
            neigh = lab.out_run("ip", "neigh", "show", "dev", "vio0").stdout.strip().splitlines()
            print("demo: the outside host's neighbour table (every guest behind the master's one MAC):")
            for line in neigh:
                print(f"  {line}")
        finally:
            for g in guests.values():
                g.stop()
    print("demo: " + ("all pings succeeded" if not failures else f"{failures} ping check(s) FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
