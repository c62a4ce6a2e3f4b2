"""The market: Proof-of-Stake selection, policies, credits and the dispatcher."""

from .credit import CreditAccount, CreditBook
from .dispatch import Dispatcher, LocalModel
from .policy import (
    DefaultPolicy,
    ModelView,
    NodeView,
    Policy,
    SpeedAwarePolicy,
    get_policy,
    register_policy,
)
from .pos import weighted_sample

__all__ = [
    "CreditAccount",
    "CreditBook",
    "DefaultPolicy",
    "Dispatcher",
    "LocalModel",
    "ModelView",
    "NodeView",
    "Policy",
    "SpeedAwarePolicy",
    "get_policy",
    "register_policy",
    "weighted_sample",
]
