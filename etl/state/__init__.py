"""The tool's state in the warehouse: checkpoints, the batch ledger, dead letters, rate budgets.

``tables`` declares the tables, ``positions`` encodes cursors, ``ledger`` writes what one
acknowledged batch changes, and ``store`` is the one object the rest of the tool talks to.
"""

from etl.state.checkpoint import Checkpoint
from etl.state.positions import decode_position, encode_position
from etl.state.store import StateStore, existing_store, open_store
from etl.state.tables import generate_ddl

__all__ = [
    "Checkpoint",
    "StateStore",
    "decode_position",
    "encode_position",
    "existing_store",
    "generate_ddl",
    "open_store",
]
