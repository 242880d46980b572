"""A camera simulator: the control channel on a real pty and a generated volume directory.

It stands in for a docked camera in tests and in `ingestd demo`, and injects the faults real cameras
show (garbage on the line, slow or corrupt replies, silence, unplugging mid-command, a lying identity).
"""

from drivers.simulator.camera import SimulatedCamera
from drivers.simulator.faults import ALWAYS, Faults
from drivers.simulator.pty_server import PtyServer

__all__ = ["ALWAYS", "Faults", "PtyServer", "SimulatedCamera"]
