"""The market: policies, credits, the offload protocol and the dispatcher."""

from ..sampling import weighted_sample
from .credit import CreditAccount, CreditBook
from .dispatch import Dispatcher, LocalModel
from .policy import (
    DefaultPolicy,
    Draining,
    FixedStake,
    ModelView,
    NodeView,
    Policy,
    PolicyWrapper,
    ServePeersOnly,
    SpeedAwarePolicy,
    get_policy,
    register_policy,
)

__all__ = [
    "CreditAccount",
    "CreditBook",
    "DefaultPolicy",
    "Dispatcher",
    "Draining",
    "FixedStake",
    "LocalModel",
    "ModelView",
    "NodeView",
    "Policy",
    "PolicyWrapper",
    "ServePeersOnly",
    "SpeedAwarePolicy",
    "get_policy",
    "register_policy",
    "weighted_sample",
]
