"""The features stage's machinery (the stage itself: :mod:`pipeline.features`).

* :mod:`~pipeline.extract.params`: the ``features`` params section (:class:`FeaturesParams`),
  STREAMS, PRECISIONS and VERSION;
* :mod:`~pipeline.extract.reader`: probing a video's faces and flow files, reading them ahead
  of the model (:class:`PrefetchReader`);
* :mod:`~pipeline.extract.prepare`: normalising, resizing and cutting a video into clip views
  on the device;
* :mod:`~pipeline.extract.extractor`: :class:`FeatureExtractor`, the models and the batching
  loop over many videos;
* :mod:`~pipeline.extract.roi_flow`: backbone ``roi_flow``, a weight-free baseline
  (:class:`RoiFlowExtractor`: flow statistics in regions on the crop's dlib landmarks, the
  head's own motion removed, on the same clip grid; the engine the stage runs instead of
  :class:`FeatureExtractor` for it);
* :mod:`~pipeline.extract.writer`: a video's features file, its digest, and ``skipped.csv``.
"""
