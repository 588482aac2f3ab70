"""vhost-ipvlan: Linux IPvlan semantics for virtual machines, as a vhost-user backend.

Layers, from the bytes up (see docs/design.md §1): ``net`` and ``switch`` (pure frame
inspection and IPvlan decisions), ``virtio`` (pure virtqueue handling over guest
memory given as buffers), ``vhost_user`` (pure protocol codec and session state),
and ``daemon`` (the only package doing I/O: sockets, mmap, eventfds, nftables).
"""

__version__ = "0.1.0"
