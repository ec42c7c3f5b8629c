"""The crop stage's machinery (the stage itself: :mod:`pipeline.crop`).

* :mod:`~pipeline.cropping.params`: the ``crop`` params section (:class:`CropParams`) and VERSION;
* :mod:`~pipeline.cropping.finder`: dlib face detection, landmarks, the face box, track planning;
* :mod:`~pipeline.cropping.reference`: the reference frame and track mode's re-detections;
* :mod:`~pipeline.cropping.geometry`: mapping the box onto decoded frames, padding, resizing;
* :mod:`~pipeline.cropping.writer`: the faces file's ``frames`` dataset, one storage chunk at a time;
* :mod:`~pipeline.cropping.video`: :func:`crop_video`, one video from frames to faces file.
"""
