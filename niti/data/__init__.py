"""Data: MNIST / CIFAR-10 / npz / image-folder readers, the cache and downloads, integer augmentation, seeded batches."""

from .augment import crop_flip, random_crop_flip
from .cifar import read_cifar10
from .dataset import DataNotFoundError, Dataset, channel_means, channel_scales, split_validation
from .download import DownloadError
from .folder import FolderImages, is_image_folder, read_image_folder
from .idx import read_idx, read_mnist
from .load import DATASETS, cache_dir, load_dataset
from .loader import BatchIterator, derived_generator
from .npz import read_npz

__all__ = ["DATASETS", "BatchIterator", "DataNotFoundError", "Dataset", "DownloadError",
           "FolderImages", "cache_dir", "channel_means", "is_image_folder", "read_image_folder", "channel_scales", "crop_flip", "derived_generator", "load_dataset",
           "random_crop_flip", "read_cifar10", "read_idx", "read_mnist", "read_npz", "split_validation"]
