"""Data: MNIST / CIFAR-10 / npz readers, the cache and downloads, integer augmentation, seeded batches."""

from .augment import crop_flip, random_crop_flip
from .cifar import read_cifar10
from .dataset import DataNotFoundError, Dataset, channel_means, channel_scales, split_validation
from .download import DownloadError
from .idx import read_idx, read_mnist
from .load import DATASETS, cache_dir, load_dataset
from .loader import BatchIterator, derived_generator
from .npz import read_npz

__all__ = ["DATASETS", "BatchIterator", "DataNotFoundError", "Dataset", "DownloadError",
           "cache_dir", "channel_means", "channel_scales", "crop_flip", "derived_generator", "load_dataset",
           "random_crop_flip", "read_cifar10", "read_idx", "read_mnist", "read_npz", "split_validation"]
