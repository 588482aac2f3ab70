"""libvirt integration: the qemu hook, the domain XML core, the watcher, ``libvirt check``.

Rules:
- ``domain`` is pure (domain XML in, slave requests and problems out); everything
  else is a thin layer around it.
- The hook talks only to the daemon's control socket: never to libvirt (libvirt
  runs hooks synchronously; calling back into it deadlocks) and never to netlink.
- libvirt-python is imported only by the commands that need it (``watch``,
  ``check``), so the hook and the daemon work without it.
"""
