"""Build script for the optional C extension; the package metadata is in setup.cfg.

``pipeline.io._jpeg_region`` decodes one rectangle of a JPEG with libjpeg-turbo (the crop
stage's region decode, see pipeline/io/jpeg_region.py). It needs libjpeg-turbo's headers
(Debian/Ubuntu: libjpeg62-turbo-dev or libjpeg-turbo8-dev); where they are missing the
build skips it (``optional=True``) and the crop stage decodes whole frames with OpenCV.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pipeline.io._jpeg_region", ["pipeline/io/_jpeg_region.c"], libraries=["jpeg"],
                             optional=True)])
