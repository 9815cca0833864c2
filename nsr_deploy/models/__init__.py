"""Torch side: the NSR layer, the networks, checkpoint loading and the deploy rewrites."""

from nsr_deploy.models.checkpoint import LoadedModel, load_model
from nsr_deploy.models.network import NSRNet
from nsr_deploy.models.reference import reference_forward
from nsr_deploy.models.sparse_conv import SparseConv2d

__all__ = ["LoadedModel", "NSRNet", "SparseConv2d", "load_model", "reference_forward"]
