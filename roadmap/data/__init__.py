"""Images for the roadmap's networks: the built-in synthetic set, ImageFolder trees and CIFAR, with their checks,
the recipes' transforms and seeded loaders."""
from .checks import DataError, validate_data
from .datasets import Datasets, TransformedImages, build_datasets, build_transforms
from .loaders import DeviceBatches, SeededDistributedSampler, ShardSampler, build_loaders
from .seeding import derived_seed

__all__ = ["DataError", "Datasets", "DeviceBatches", "SeededDistributedSampler", "ShardSampler", "TransformedImages",
           "build_datasets", "build_loaders", "build_transforms", "derived_seed", "validate_data"]
