"""The sandbox vendors: local emulations of the vendor APIs (see :mod:`etl.sandbox.server`)."""

from etl.sandbox.server import Faults, Sandbox, SandboxServer, start_sandbox

__all__ = ["Faults", "Sandbox", "SandboxServer", "start_sandbox"]
