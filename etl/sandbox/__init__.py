"""The sandbox vendors: local emulations of the vendor APIs (see :mod:`etl.sandbox.server`)."""

from etl.sandbox import airship, fuul, thrivestack, torque
from etl.sandbox.emulator import Faults
from etl.sandbox.server import Sandbox, SandboxServer, start_sandbox

# The environment variables the demo's pipeline file names its credentials by, and the keys
# the sandbox accepts (never real ones).
SANDBOX_CREDENTIALS = {
    "FUUL_API_KEY": next(iter(fuul.KEYS)),
    "TORQUE_API_KEY": torque.KEY,
    "THRIVESTACK_API_KEY": thrivestack.KEY,
    "AIRSHIP_TOKEN": airship.TOKEN,
    "AIRSHIP_APP_KEY": airship.APP_KEY,
}

__all__ = ["SANDBOX_CREDENTIALS", "Faults", "Sandbox", "SandboxServer", "start_sandbox"]
