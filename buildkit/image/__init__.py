"""The SD card: an image (MBR + FAT32) holding the Alpine boot files, the boot repository and the card files."""

from buildkit.image.image import BootPackage, ImageResult, build_image

__all__ = ["BootPackage", "ImageResult", "build_image"]
