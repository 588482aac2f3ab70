"""``answer_of``: reading testpmd's answer to a command out of its interleaved output.

testpmd's other threads print log lines and port events at any time; CI once saw one
land inside the prompt, and the command then timed out waiting for ``testpmd> ``.
"""

from __future__ import annotations

from tests.support.testpmd import answer_of

STOP = "stop\nTelling cores to stop...\nDone.\n"
RECONNECT = "virtio_user_dev_server_reconnect(): server mode virtio-user reconnection succeeds!\n"


def test_answer_up_to_the_prompt() -> None:
    assert answer_of(STOP + "testpmd> ") == STOP
    assert answer_of(STOP + "testpmd> \nPort 0: link state change event\n") == STOP


def test_no_prompt_yet() -> None:
    assert answer_of(STOP) is None
    assert answer_of(STOP + "tes") is None


def test_a_log_line_inside_the_prompt() -> None:
    assert answer_of(STOP + "tes" + RECONNECT + "tpmd> ") == STOP


def test_a_port_event_inside_the_prompt_or_the_answer() -> None:
    event = "\nPort 1: link state change event\n"
    assert answer_of(STOP + "test" + event + "pmd> ") == STOP
    assert answer_of("stop\nTelling cores to stop..." + event + "\nDone.\ntestpmd> ") == STOP
    assert answer_of("stop\n" + RECONNECT + "Telling cores to stop...\nDone.\ntestpmd> ") == STOP


def test_the_vhost_librarys_lines() -> None:
    config = "VHOST_CONFIG: (/tmp/a.sock) read message VHOST_USER_SET_VRING_KICK\n"
    assert answer_of(STOP + "testp" + config + "md> ") == STOP
