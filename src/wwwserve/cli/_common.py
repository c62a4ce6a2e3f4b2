"""What every command shares: logging set-up, JSON output, the help epilog."""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


EPILOG = """examples:
  wwwserve demo                                   # 4 nodes, a burst offloaded, live view
  wwwserve node node_configs/node1.yaml           # run one node from its config
  wwwserve sim-engine --port 30000                # a simulated SGLang server (no GPU)
  wwwserve testnet --nodes 5                      # 5 node processes, a workload, a report
  wwwserve status node_configs/node1.yaml         # peers, load, credit of a running node
  wwwserve simulate fluctuating                   # the paper's experiment, virtual time
  wwwserve genesis node_configs/*.yaml -o genesis.yaml   # a private network's genesis
  wwwserve ledger show node_configs/node1.yaml    # a node's chain on disk
  wwwserve keygen keys/my-node.key                # create a key file (0600)
  wwwserve id node_configs/node1.yaml             # print a node's peer id
"""


def setup_logging(verbosity: int, level: str = "WARNING",
                   libp2p_level: str = "CRITICAL") -> None:
    """Logging for this process (wwwserve.log): ``level`` lowered by 10 per ``-v``;
    py-libp2p at ``libp2p_level``, or DEBUG with ``-vvv``."""
    from ..log import setup_logging

    if verbosity >= 3 or libp2p_level != "CRITICAL":
        # py-libp2p re-quietens its logger when first imported: import it first
        from ..overlay import libp2p as _  # noqa: F401
    base = logging.getLevelNamesMapping()[level]
    setup_logging(max(logging.DEBUG, base - 10 * verbosity),
                  libp2p_level="DEBUG" if verbosity >= 3 else libp2p_level)


def print_json(obj: object) -> None:
    print(json.dumps(obj), flush=True)
