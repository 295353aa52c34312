"""The policy file: typed models, the YAML reader with file:line:key errors."""

from edge.policy.load import default_policy_path, load_policy, parse_policy
from edge.policy.model import Policy
from edge.policy.schema import PolicyError, PolicyErrors

__all__ = ["Policy", "PolicyError", "PolicyErrors", "default_policy_path", "load_policy", "parse_policy"]
