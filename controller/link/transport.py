"""Sending a multipart message on a ZeroMQ socket, at the cost the link can afford per step.

pyzmq's ``Socket.send_multipart`` combines its flags as ``zmq.SNDMORE | flags``, a Python
``enum.Flag`` operation per frame: for the four frames of an ACTION reply that is about three
times the cost of the same sends with a plain int flag (``python -m bench link`` prints both in
its in-process line). Needs only pyzmq, like the robot-side client that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

_SNDMORE = int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket[bytes], frames: Sequence[bytes], flags: int = 0) -> None:
    """Send ``frames`` as one multipart message (copying: small frames); ``flags`` is added
    to every frame's (e.g. ``zmq.NOBLOCK``)."""
    send = socket.send
    last = len(frames) - 1
    more = _SNDMORE | int(flags)
    for index, frame in enumerate(frames):
        send(frame, more if index < last else int(flags))
