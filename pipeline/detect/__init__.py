"""The non-learned baseline's machinery (the stage itself: :mod:`pipeline.baseline`).

The ROI motion signal of backbone ``roi_flow`` (:mod:`pipeline.extract.roi_flow`: landmark
regions, the head's own motion removed, the displacement against a sliding reference)
reduced to one number per frame, and peak-to-interval detection on it, so that evaluate can
report beside IAENet what a detector with no learning at all gets on the same protocols.

* :mod:`~pipeline.detect.params`: the ``baseline`` params section (:class:`BaselineParams`), ``VERSION``;
* :mod:`~pipeline.detect.signal`: the per-frame motion signal of one video (:func:`motion_signal`);
* :mod:`~pipeline.detect.intervals`: peaks, their intervals, type, score and suppression (:func:`detect`);
* :mod:`~pipeline.detect.video`: one video from its faces and flow files to its predictions
  (:func:`baseline_video`, the stage's per-video function).
"""
