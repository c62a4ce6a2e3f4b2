"""The market: Proof-of-Stake selection, policies, credits and the dispatcher."""

from ..sampling import weighted_sample
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
