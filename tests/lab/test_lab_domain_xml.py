"""The lab's domain XML (ansible/roles/lab_vms/templates/domain.xml.j2) rendered with Jinja2
(ansible-core's): the addresses live only in the vhost-ipvlan metadata (the slaves, whose
DHCP the daemon answers), none on the kernel command line, unless a NIC says ``static``.
No lab needed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.lab.lab import ANSIBLE, lab_vars

jinja2 = pytest.importorskip("jinja2")

VI = "{https://vhost-ipvlan.example/xmlns/1}"
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"


def render(vm: dict[str, Any]) -> ET.Element:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ANSIBLE / "roles" / "lab_vms" / "templates"),
                             undefined=jinja2.StrictUndefined)
    env.filters["zip"] = zip  # an Ansible filter
    v = lab_vars("t")
    text = env.get_template("domain.xml.j2").render(
        vm=vm, lab_masters=v["lab_masters"], lab_vm_dir="/var/lib/libvirt/images/t", lab_vm_memory_mib=384,
        lab_image_cmdline=CMDLINE, vhost_ipvlan_socket_dir=v["vhost_ipvlan_socket_dir"])
    return ET.fromstring(text)


def test_addresses_only_in_the_metadata() -> None:
    vm = lab_vars("t")["lab_vms"][0]
    dom = render(vm)
    assert dom.findtext("os/cmdline") == CMDLINE
    ifaces = dom.findall(f"metadata/{VI}vhost-ipvlan/{VI}interface")
    assert [[a.text for a in i.findall(f"{VI}address")] for i in ifaces] == [n["addresses"] for n in vm["nics"]]
    assert all(i.get("dhcp") is None for i in ifaces)  # the daemon's default: DHCP answered


def test_a_static_nic_on_the_command_line_without_dhcp() -> None:
    vm = lab_vars("t")["lab_vms"][0]
    vm["nics"][1]["static"] = True
    dom = render(vm)
    mac, addrs = vm["nics"][1]["mac"], vm["nics"][1]["addresses"]
    assert dom.findtext("os/cmdline") == f"{CMDLINE} vi.net={mac},{','.join(addrs)}"
    ifaces = dom.findall(f"metadata/{VI}vhost-ipvlan/{VI}interface")
    assert [i.get("dhcp") for i in ifaces] == [None, "no"]
