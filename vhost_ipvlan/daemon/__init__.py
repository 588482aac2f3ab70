"""The daemon: the only package that does I/O (sockets, mmap, eventfds, nftables).

``server.Daemon`` wires configuration, switch ports, uplinks and vhost-user
endpoints together on one asyncio event loop; ``datapath`` moves frames.
"""
