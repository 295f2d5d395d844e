"""Images for the roadmap's networks: the built-in synthetic set, ImageFolder trees and CIFAR, with their checks,
the recipes' transforms, an image cache and seeded loaders."""
from .cache import StoredImages, default_cache_short_side
from .checks import DataError, validate_data
from .datasets import Datasets, TransformedImages, build_datasets, build_transforms
from .loaders import DeviceBatches, SeededDistributedSampler, ShardSampler, build_loaders
from .seeding import derived_seed
from .workers import default_workers, usable_cores

__all__ = ["DataError", "Datasets", "DeviceBatches", "SeededDistributedSampler", "ShardSampler", "StoredImages",
           "TransformedImages", "build_datasets", "build_loaders", "build_transforms", "default_cache_short_side",
           "default_workers", "derived_seed", "usable_cores", "validate_data"]
