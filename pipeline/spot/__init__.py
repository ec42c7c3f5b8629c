"""``m2es spot``: spot macro- and micro-expressions in new videos with a trained IAENet.

::

    m2es spot VIDEO_OR_FRAME_FOLDER... --model RUN_OR_CHECKPOINT [--out DIR] [options]

An input is a video file (anything decord/FFmpeg decodes: mp4, avi, mov, mkv, ...) or a
folder of frame images (``--fps`` required; numbered files as the ingest stage reads
them), at any frame rate and of any length. ``--model`` is a training run folder
(``data/<ds>/runs``: its ``final/model.pt``, trained on every subject), a run's
sub-folder, or a checkpoint file.

How it works: the input goes through the pipeline's own stage functions, not copies.
Per input, a cache folder ``<spot.cache_dir>/<key>/`` is built (key: SHA-256 of the
input's bytes, for folders of every frame file's name and bytes), holding a link to the
input under a fixed name plus an empty generic-layout ``annotations.csv``; then
:func:`pipeline.ingest.run` (generic door), :func:`pipeline.resample.run` (to the model's
frame rate, the pipeline's ``floor(j * src / tgt)`` rule), :func:`pipeline.crop.run`,
:func:`pipeline.flow.run` and :func:`pipeline.features.run` run with a
:class:`~pipeline.core.stage.StageContext` whose data root is the cache and whose crop, flow
and features params are the ones the model's training features were made with. The
stages' per-video digests make a second run on the same input skip crop, flow and
features (``steps`` in the JSON says ``cached`` or ``computed`` for each, from the output
file's inode and mtime). IAENet inference is :func:`pipeline.learning.postprocess.predict_video`;
thresholds are applied with :func:`pipeline.scoring.protocols.apply_thresholds`; positions go
back to the input's frame numbers through :func:`pipeline.io.tables.to_source_frames`.

Where the model's feature recipe comes from (first that exists):

1. the checkpoint's ``params`` (``crop``, ``flow``, ``features`` sections and
   ``target_fps``/``color``, when the train stage records them);
2. the dataset folder of the run (``data/<ds>/{faces,flow,features}``: the params stored
   in the files the model was trained on, checked against the checkpoint's
   ``features_digest``; fps and colour from the faces files);
3. ``--dataset NAME``: ``params.yaml`` with ``per_dataset.NAME`` merged in, as the stages read it.

The checkpoint's feature provenance (backbone, weights SHA-256 per stream, clip, stride,
input size, flow bound, feature width) must match what spot would compute, or spot stops
with exit code 4 before any heavy work, saying which ``--weights-rgb``/``--weights-flow``
file (``features.weights.*``) to pass.

Thresholds: ``--threshold-macro``/``--threshold-micro`` win; else ``--thresholds FILE``;
else the evaluate stage's ``thresholds.json`` of the run (``data/<ds>/evaluate/``, the
cross-fold protocol's choice on all subjects' out-of-fold predictions); else
``params.yaml: spot.thresholds``, and the JSON and the log say so.

Outputs, in ``--out DIR/<name>/`` (default ``spot_out/<name>/``, ``<name>`` the input's
file stem or folder name):

* ``intervals.csv``: video, type, onset, apex, offset (frame numbers of the input: the
  0-based decode index for video files, the folder's own numbers for frame folders;
  offsets are the last input frame the interval covers, via ``to_source_frames(...,
  end=True)``), onset_s, apex_s, offset_s, score. Seconds count from the first frame:
  ``onset_s = (onset - first) / fps`` and ``offset_s = (offset - first + 1) / fps`` (the end
  of the last frame), so ``[onset_s, offset_s)`` is the interval's time span. The apex is
  an estimate: IAENet predicts intervals, not apexes, so the apex is the interval's centre
  (at the model's frame rate, then mapped like an onset).
* ``intervals.json``: the same intervals plus the input, model, thresholds (and where they
  came from), lost-face spans, notes and cache steps;
* ``timeline.png``: scores of all candidate intervals over time, the thresholds, the kept
  intervals, lost-face spans (and ``--ground-truth`` intervals when given: kept intervals
  that match one, same type at IoU >= 0.5, are green, the others red);
* with ``--annotate``: ``annotated.mp4``, a copy of the video with the face box, the
  detected intervals and lost-face spans drawn on it (OpenCV ``VideoWriter``; labels in
  white on a dark box).

With ``--ground-truth`` the F1 (macro, micro, overall) of each input is printed on its status
line, and over all inputs when there are several; the counts are in ``intervals.json``.
Messages name the input's own path and frame numbers (never its cache folder); an input that
fails leaves no output folder; what native decoders print (FFmpeg, decord) stays off the
terminal (``-v`` logs it).

Lost face: crop (``mode: fixed``) keeps the reference frame's box for every frame, so a
face that leaves the picture still yields crops. Spot runs the crop stage's dlib face
detector on one crop every ``spot.face_check_every_s`` seconds (resized to
``spot.face_check_size`` pixels); runs of at least ``spot.face_check_min_samples`` samples
without a face become lost-face spans (from the last sample with a face to the next one),
reported in the JSON and excluded: predictions overlapping them are dropped.

Exit codes (scripts can rely on them):

* ``0``: every input spotted, outputs written (a lost-face span is not an error);
* ``1``: unexpected internal error (a bug; the traceback is logged);
* ``2``: bad input or usage: unreadable or truncated video, frame folder without
  ``--fps`` or with gaps, an input too short for one feature clip, an input slower than the
  model's frame rate, an output or cache folder that cannot be written, bad options;
* ``3``: no face found in the input;
* ``4``: model problem: not a readable m2es checkpoint, no recoverable feature recipe, or a
  feature backbone / weights / clip geometry that does not match the features spot would
  feed it;
* ``130``: interrupted (Ctrl-C): one line says so; output files are written atomically, so
  none is half-written, and a rerun reuses the finished crop/flow/features.

With several inputs every input is tried; the exit code is that of the first input that
failed (model and usage errors stop at once).

The package, one module per job: :mod:`~pipeline.spot.errors` (exit codes),
:mod:`~pipeline.spot.params` (the ``spot`` section), :mod:`~pipeline.spot.inputs` (probing,
content key, cache folder), :mod:`~pipeline.spot.recipe` (checkpoint, feature recipe,
thresholds), :mod:`~pipeline.spot.stages` (the stages on the cache),
:mod:`~pipeline.spot.faces_check` (lost-face spans), :mod:`~pipeline.spot.messages` (messages in the
user's terms), :mod:`~pipeline.spot.native` (native decoder noise), :mod:`~pipeline.spot.intervals` (frame
numbers and seconds), :mod:`~pipeline.spot.ground_truth` (``--ground-truth``),
:mod:`~pipeline.spot.spotting` (one input end to end), :mod:`~pipeline.spot.outputs` (files
written) and :mod:`~pipeline.spot.cli` (the command line).
"""

from pipeline.spot.cli import main

__all__ = ["main"]
