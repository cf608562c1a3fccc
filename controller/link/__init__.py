"""The robot link: the controller served over ZeroMQ (protocol: docs/protocol.md).

- :mod:`controller.link.protocol`: version, message types, error codes, limits.
- :mod:`controller.link.codec`: msgpack header + raw float32 frames, and their checks.
- :mod:`controller.link.client`: ``RobotClient``, the robot's side (numpy + pyzmq + msgpack
  only: no torch, onnxruntime or MuJoCo).
- :mod:`controller.link.server`: ``LinkServer`` and ``serve``, a Controller behind a socket.
- :mod:`controller.link.sessions`: per-robot state, episode recording and the watchdog.
- :mod:`controller.link.security`: loopback-by-default binds and CURVE keys.
- :mod:`controller.link.sim_robot`: a MuJoCo robot that talks only through the protocol.
- :mod:`controller.link.cli`: ``adaptctl serve`` and ``adaptctl sim-robot``.

This package imports nothing itself, so ``import controller.link.client`` stays light.
"""
